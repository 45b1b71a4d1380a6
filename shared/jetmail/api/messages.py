"""Transactional send API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page, Problem
from jetmail.api.errors import problem_for, validation_problem
from jetmail.compliance.apikeys import ApiKey
from jetmail.messaging.log import LogFilter, MessageDetail, MessageSummary, open_log
from jetmail.messaging.messages import TAG_PATTERN, MessagePublic, MessageStatus, SendRequest
from jetmail.services import Services

router = APIRouter(prefix="/v1/messages", tags=["messages"])

MAX_BATCH = 500


@router.post("", status_code=202, response_model=MessagePublic,
             responses={404: {"description": "unknown template"}, 409: {"description": "idempotency conflict"},
                        413: {"description": "attachments over JETMAIL_MAX_ATTACHMENT_BYTES, or the body over "
                                             "the route's limit"},
                        422: {"description": "invalid request (an owned or malformed header, a dangerous "
                                             "attachment, template and inline content together...), From not "
                                             "an allowed identity, or a marketing template without unsubscribe "
                                             "link or postal address"}})
def send_message(
    body: SendRequest,
    response: Response,
    key: Annotated[ApiKey, Depends(require("send"))],
    svc: Annotated[Services, Depends(services)],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> MessagePublic:
    """Queue one transactional message (high priority): a stored template, or inline subject with html and/or
    text. Same Idempotency-Key + same body → same message, no second send; same key + different body → 409.
    A suppressed recipient's message is answered with status ``suppressed`` (why in its history) and never
    queued; a suppressed cc or bcc address is dropped and listed in ``suppressed_recipients``."""
    message, created = svc.messages.submit(body, api_key_id=key.key_id, idempotency_key=idempotency_key)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return message


class BatchRequest(BaseModel):
    """Body of ``POST /v1/messages/batch``: each item is a ``POST /v1/messages`` body, plus an optional
    ``idempotency_key`` of its own."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH,
                                           description="send requests (the SendRequest schema), each with an "
                                                       "optional idempotency_key")


class BatchItemResult(BaseModel):
    index: int
    status: int = Field(description="what POST /v1/messages would have answered for this item alone")
    message: MessagePublic | None = None
    replayed: bool = Field(default=False, description="an earlier send with this item's idempotency key")
    problem: Problem | None = Field(default=None, description="why the item was refused: the problem body "
                                                              "POST /v1/messages would have answered")


class BatchResult(BaseModel):
    accepted: int
    failed: int
    data: list[BatchItemResult]


@router.post("/batch", response_model=BatchResult,
             responses={413: {"description": "the body is over the route's limit"}})
def send_batch(
    body: BatchRequest,
    key: Annotated[ApiKey, Depends(require("send"))],
    svc: Annotated[Services, Depends(services)],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchResult:
    """Queue up to 500 messages, each on its own: one result per item, in order, with the status that item
    alone would have had (202, or 404/409/413/422 with why). An item's idempotency key is its own
    ``idempotency_key``, else the request's ``Idempotency-Key`` header with ``:<index>`` appended, so a
    retried batch sends nothing twice. Items are submitted one after another: a cost of one send each."""
    results: list[BatchItemResult] = []
    for index, raw in enumerate(body.messages):
        item = dict(raw)
        own_key = item.pop("idempotency_key", None)
        if own_key is not None and (not isinstance(own_key, str) or not 1 <= len(own_key) <= 255):
            results.append(_refused(index, validation_problem(
                [{"loc": ("idempotency_key",), "msg": "a string of 1-255 characters"}])))
            continue
        item_key = own_key or (f"{idempotency_key}:{index}" if idempotency_key else None)
        try:
            request = SendRequest.model_validate(item)
            message, created = svc.messages.submit(request, api_key_id=key.key_id, idempotency_key=item_key)
        except ValidationError as exc:
            results.append(_refused(index, validation_problem(exc.errors())))
            continue
        except Exception as exc:
            problem = problem_for(exc)
            if problem is None:
                raise
            results.append(_refused(index, problem))
            continue
        results.append(BatchItemResult(index=index, status=202, message=message, replayed=not created))
    accepted = sum(1 for r in results if r.status == 202)
    return BatchResult(accepted=accepted, failed=len(results) - accepted, data=results)


@router.get("", response_model=Page[MessageSummary],
            responses={404: {"description": "unknown campaign_id"},
                       422: {"description": "a bad filter (date, status, tag, limit), a cursor of another "
                                            "search, or campaign_id with tag, since or until"}})
def list_messages(
    key: Annotated[ApiKey, Depends(require("admin"))],
    svc: Annotated[Services, Depends(services)],
    to: Annotated[str | None, Query(min_length=3, max_length=320, description="recipient address")] = None,
    status: Annotated[MessageStatus | None, Query(description="the message's status now")] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN)] = None,
    campaign_id: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    since: Annotated[datetime | None, Query(description="created at or after (RFC 3339; UTC when no offset)")] = None,
    until: Annotated[datetime | None, Query(description="created at or before (RFC 3339)")] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> Page[MessageSummary]:
    """Search the message log, newest first (a campaign's messages in batch order); an admin key, as it reads
    every application's mail (a send key reads one message by its id). Each search reads one
    index: the recipient's (``to``), the tag's (``tag``), the campaign's batches (``campaign_id``), else
    the day partitions between ``since`` and ``until`` (the last 30 days by default); the other filters are
    applied to what it reads. One Query per ``limit`` items read (for a tag or days, plus one BatchGetItem),
    at most 10 a page: a page may be short, or empty, with a ``next_cursor``; follow it until null.
    docs/guide/sending.md#finding-a-message has the cost of each combination."""
    query = LogFilter(to=to, status=status, tag=tag, campaign_id=campaign_id, since=since, until=until)
    items, next_cursor = open_log(svc).search(query, limit=limit, cursor=cursor)
    return Page[MessageSummary](data=items, next_cursor=next_cursor)


@router.get("/{message_id}", response_model=MessageDetail, responses={404: {"description": "unknown message"}})
def get_message(
    message_id: str,
    key: Annotated[ApiKey, Depends(require("send"))],
    svc: Annotated[Services, Depends(services)],
) -> MessageDetail:
    """Status and history of one message, with its metadata, tags, copies and attachments' names, and its
    timeline: the statuses it went through and its events (delivered, opened, clicked with the link,
    bounced, complained...), in time order. A campaign message (``cm_...``) is built from its campaign's
    batch and journal. One GetItem (a campaign message: two and a journal read) and one Query of events."""
    return open_log(svc).detail(message_id)


def _refused(index: int, problem: dict[str, Any]) -> BatchItemResult:
    return BatchItemResult(index=index, status=problem["status"], problem=Problem.model_validate(problem))
