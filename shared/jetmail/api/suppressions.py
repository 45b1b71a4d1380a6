"""The suppression list: who is never mailed (or never mailed marketing), and why."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.audience.addresses import InvalidAddress, normalise_email
from jetmail.compliance.apikeys import ApiKey
from jetmail.deliverability.suppressions import Suppression
from jetmail.services import Services

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]


class SuppressionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(min_length=3, max_length=320)
    reason: Literal["manual", "unsubscribed", "hard_bounce", "spam_complaint"] = "manual"

    @field_validator("email")
    @classmethod
    def _valid(cls, value: str) -> str:
        try:
            return normalise_email(value).lower()
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None


@router.get("", response_model=Page[Suppression], responses={422: {"description": "invalid limit or cursor"}})
def list_suppressions(key: Admin, svc: Svc, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      cursor: Annotated[str | None, Query(max_length=2000)] = None,
                      search: Annotated[str | None, Query(max_length=320)] = None) -> Page[Suppression]:
    """Newest first, ``limit`` at a time; follow ``next_cursor`` until it is null. ``search`` filters by a
    part of the address within the page read (a page may then hold fewer than ``limit``, or none)."""
    page = svc.suppressions.page(limit=limit, cursor=cursor)
    items = [i for i in page.items if search.lower() in i.email] if search else page.items
    return Page(data=items, next_cursor=page.next_cursor)


@router.get("/export.csv", response_class=StreamingResponse)
def export_csv(key: Admin, svc: Svc) -> StreamingResponse:
    """Every suppression as CSV (email, reason, source, created_at), streamed page by page."""
    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["email", "reason", "source", "created_at"])
        start = None
        while True:
            items, start = svc.suppressions.list(limit=500, start=start)
            for item in items:
                writer.writerow([item.email, item.reason, item.source, item.created_at])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if not start:
                return

    return StreamingResponse(rows(), media_type="text/csv",
                             headers={"Content-Disposition": "attachment; filename=suppressions.csv"})


@router.get("/{email}", response_model=Suppression, responses={404: {"description": "not suppressed"}})
def get_suppression(email: str, key: Admin, svc: Svc) -> Suppression:
    entry = svc.suppressions.get(email)
    if entry is None:
        raise HTTPException(404, f"{email} is not suppressed")
    return entry


@router.post("", status_code=201, response_model=Suppression)
def add_suppression(body: SuppressionCreate, key: Admin, svc: Svc) -> Suppression:
    """Suppress an address. ``manual``, ``hard_bounce`` and ``spam_complaint`` block all mail;
    ``unsubscribed`` blocks marketing only."""
    entry = svc.suppressions.add(body.email, reason=body.reason, source=f"api:{key.key_id}")
    if entry.blocks_transactional:
        svc.feedback.cancel_pending(entry.email, reason=entry.reason)
    return entry


@router.delete("/{email}", status_code=204, response_class=Response)
def remove_suppression(email: str, key: Admin, svc: Svc) -> Response:
    if not svc.suppressions.remove(email):
        raise HTTPException(404, f"{email} is not suppressed")
    return Response(status_code=204)
