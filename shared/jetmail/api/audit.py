"""The audit log (admin scope); the dependency that names a request's API key as its actor is
``jetmail.api.actor``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.compliance.apikeys import ApiKey
from jetmail.compliance.audit import AuditEntry
from jetmail.services import Services

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=Page[AuditEntry], responses={422: {"description": "invalid time or cursor"}})
def list_audit(key: Admin, svc: Svc, since: Annotated[str | None, Query(max_length=64)] = None,
               until: Annotated[str | None, Query(max_length=64)] = None,
               action: Annotated[str | None, Query(max_length=64, description="e.g. `campaign.sent`, or a "
                                                                          "prefix ending in `.`")] = None,
               actor: Annotated[str | None, Query(max_length=128, description="`key:<id>`, `cli:<user>`, "
                                                                          "`system`")] = None,
               target: Annotated[str | None, Query(max_length=320, description="a campaign id, "
                                                   "`<template>/<locale>`, or an email address (matched "
                                                   "by its pseudonym)")] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100,
               cursor: Annotated[str | None, Query(max_length=512)] = None) -> Page[AuditEntry]:
    """Management actions, newest first; follow ``next_cursor`` for older ones."""
    if target and "@" in target:
        target = svc.pseudonyms.pseudonym(target)
    page = svc.audit.query(since=since, until=until, action=action, actor=actor, target=target, limit=limit,
                           cursor=cursor)
    return Page(data=page.entries, next_cursor=page.next_cursor)
