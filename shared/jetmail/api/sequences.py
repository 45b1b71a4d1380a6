"""Sequences: enrol a recipient in a multi-step series; cancel pending steps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.compliance.apikeys import ApiKey
from jetmail.messaging.sequences import EnrolmentPublic, EnrolRequest, SequenceDefinition
from jetmail.services import Services

router = APIRouter(prefix="/v1/sequences", tags=["sequences"])
Sender = Annotated[ApiKey, Depends(require("send"))]
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]


class Cancelled(BaseModel):
    cancelled_messages: int


@router.post("", status_code=202, response_model=EnrolmentPublic,
             responses={404: {"description": "unknown sequence or template"},
                        409: {"description": "idempotency conflict"}})
def enrol(body: EnrolRequest, response: Response, key: Sender, svc: Svc,
          idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> EnrolmentPublic:
    """Start a sequence for one recipient: step messages are recorded now and sent at their times.
    Same Idempotency-Key + same body → the same enrolment, nothing sent twice; same key + different body → 409,
    as ``POST /v1/messages``."""
    enrolment, created = svc.sequences.enrol(body, api_key_id=key.key_id, idempotency_key=idempotency_key)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return enrolment


@router.delete("", response_model=Cancelled)
def cancel_for_recipient(key: Sender, svc: Svc, to: Annotated[str, Query(min_length=3, max_length=320)],
                         sequence: Annotated[str | None, Query(max_length=64)] = None) -> Cancelled:
    """Cancel pending steps of every active sequence (or one named sequence) for a recipient."""
    return Cancelled(cancelled_messages=svc.sequences.cancel_for_recipient(to, sequence=sequence))


@router.get("/definitions", response_model=Page[SequenceDefinition])
def list_definitions(key: Sender, svc: Svc) -> Page[SequenceDefinition]:
    """Defined sequences (stored ones and the built-in `welcome` and `order`), all in one page."""
    return Page(data=svc.sequences.definitions(), next_cursor=None)


@router.put("/definitions/{name}", response_model=SequenceDefinition)
def define(name: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")],
           body: SequenceDefinition, key: Admin, svc: Svc) -> SequenceDefinition:
    """Create or replace a named sequence."""
    return svc.sequences.define(body.model_copy(update={"name": name}))


@router.get("/{enrolment_id}", response_model=EnrolmentPublic)
def get_enrolment(enrolment_id: str, key: Sender, svc: Svc) -> EnrolmentPublic:
    """An enrolment with the status of each step's message."""
    return svc.sequences.get(enrolment_id)


@router.delete("/{enrolment_id}", response_model=Cancelled)
def cancel(enrolment_id: str, key: Sender, svc: Svc) -> Cancelled:
    """Cancel the pending steps of one enrolment."""
    return Cancelled(cancelled_messages=svc.sequences.cancel(enrolment_id))
