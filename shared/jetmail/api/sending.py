"""Sending status and the operator's resume."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from jetmail.api.auth import require, services
from jetmail.compliance.apikeys import ApiKey
from jetmail.deliverability import sending
from jetmail.services import Services

router = APIRouter(prefix="/v1/sending", tags=["sending"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]


@router.get("/status")
def sending_status(key: Admin, svc: Svc) -> dict[str, Any]:
    """Current limits, tokens used per window, throttling state, warm-up day, reputation figures over the
    rolling window, reputation stops, and queue depths."""
    return sending.status(svc)


@router.post("/resume")
def sending_resume(key: Admin, svc: Svc) -> dict[str, Any]:
    """Clear a reputation stop of marketing sending and re-enqueue the batches it parked."""
    return sending.resume(svc)
