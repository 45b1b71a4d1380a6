"""Transactional send API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

from jetmail.api.auth import require, services
from jetmail.compliance.apikeys import ApiKey
from jetmail.messaging.messages import MessagePublic, SendRequest
from jetmail.services import Services

router = APIRouter(prefix="/v1/messages", tags=["messages"])



@router.post("", status_code=202, response_model=MessagePublic,
             responses={404: {"description": "unknown template"}, 409: {"description": "idempotency conflict"},
                        422: {"description": "invalid request, From not an allowed identity, or a marketing "
                                             "template without unsubscribe link or postal address"}})
def send_message(
    body: SendRequest,
    response: Response,
    key: Annotated[ApiKey, Depends(require("send"))],
    svc: Annotated[Services, Depends(services)],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> MessagePublic:
    """Queue one transactional message (high priority). Same Idempotency-Key + same body → same message,
    no second send; same key + different body → 409. A suppressed recipient's message is answered with
    status ``suppressed`` (why in its history) and never queued."""
    message, created = svc.messages.submit(body, api_key_id=key.key_id, idempotency_key=idempotency_key)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return message


@router.get("/{message_id}", response_model=MessagePublic, responses={404: {"description": "unknown message"}})
def get_message(
    message_id: str,
    key: Annotated[ApiKey, Depends(require("send"))],
    svc: Annotated[Services, Depends(services)],
) -> MessagePublic:
    """Status and history of one message."""
    return svc.messages.get(message_id)
