"""Outgoing webhooks: endpoints, their secrets, their delivery log and replay (docs/guide/webhooks.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.compliance.apikeys import ApiKey
from jetmail.services import Services
from jetmail.storage import keys
from jetmail.storage.cursors import InvalidCursor, pack, unpack
from jetmail.storage.table import key_values, resume_after
from jetmail.webhooks.deliveries import DeliveryAttempt
from jetmail.webhooks.endpoints import EndpointCreate, EndpointNotFound, EndpointPublic, EndpointUpdate
from jetmail.webhooks.service import ReplayTooLarge

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]
T = TypeVar("T")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such endpoint"}}


class EndpointWithSecret(EndpointPublic):
    secret: str = Field(description="`whsec_...`: verifies the `webhook-signature` header (shown on create, "
                                    "rotate and `GET /v1/webhooks/{id}/secret`)")


class SecretPublic(BaseModel):
    secret: str
    previous_secrets_valid_until: list[float] = Field(default_factory=list,
                                                      description="Unix times the rotated-out secrets stop signing")


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_hours: float = Field(default=24.0, ge=0, le=24 * 7,
                               description="how long the current secret keeps signing beside the new one")


class ReplayRequest(BaseModel):
    """One event (``event_id``) or every event attempted in a time range (``since``, ``until``)."""

    model_config = ConfigDict(extra="forbid")
    event_id: str | None = Field(default=None, min_length=1, max_length=64)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ReplayRequest:
        if (self.event_id is None) == (self.since is None):
            raise ValueError("give either event_id, or since (and optionally until)")
        if self.since is not None and self.until is not None and self.until < self.since:
            raise ValueError("until is before since")
        return self


class ReplayResult(BaseModel):
    replayed: list[str] = Field(description="the event ids enqueued again")


def _found(call: Callable[[], T]) -> T:
    try:
        return call()
    except EndpointNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _start(cursor: str | None, *, attributes: set[str], pk_prefix: str) -> dict[str, Any] | None:
    """The start key a cursor of this list packed: exactly its key attributes, strings, in its partition."""
    if not cursor:
        return None
    try:
        value = unpack(cursor)
    except InvalidCursor as exc:
        raise HTTPException(422, str(exc)) from None
    if not isinstance(value, dict) or set(value) != attributes or \
            not all(isinstance(v, str) for v in value.values()) or not value["pk"].startswith(pk_prefix):
        raise HTTPException(422, "cursor is not one this list returned")
    return resume_after(value)


def _cursor(last: dict[str, Any] | None) -> str | None:
    return pack(key_values(last)) if last else None


@router.post("", status_code=201, response_model=EndpointWithSecret)
def create_endpoint(body: EndpointCreate, key: Admin, svc: Svc) -> EndpointWithSecret:
    """Register an endpoint; the answer carries its signing secret."""
    endpoint = svc.webhook_service.create(body)
    return EndpointWithSecret(**endpoint.public().model_dump(), secret=endpoint.secret)


@router.get("", response_model=Page[EndpointPublic], responses={422: {"description": "invalid cursor"}})
def list_endpoints(key: Admin, svc: Svc, limit: Annotated[int, Query(ge=1, le=100)] = 50,
                   cursor: Annotated[str | None, Query(max_length=2000)] = None) -> Page[EndpointPublic]:
    """Oldest first."""
    start = _start(cursor, attributes={"pk", "sk", "gsi1pk", "gsi1sk"}, pk_prefix=keys.webhook_partition(""))
    items, last = svc.webhook_service.list_page(limit=limit, start=start)
    return Page[EndpointPublic](data=[e.public() for e in items], next_cursor=_cursor(last))


@router.get("/{endpoint_id}", response_model=EndpointPublic, responses=NOT_FOUND)
def get_endpoint(endpoint_id: str, key: Admin, svc: Svc) -> EndpointPublic:
    return _found(lambda: svc.webhook_service.get(endpoint_id)).public()


@router.get("/{endpoint_id}/secret", response_model=SecretPublic, responses=NOT_FOUND)
def get_secret(endpoint_id: str, key: Admin, svc: Svc) -> SecretPublic:
    endpoint = _found(lambda: svc.webhook_service.get(endpoint_id))
    return SecretPublic(secret=endpoint.secret,
                        previous_secrets_valid_until=[float(s["until"]) for s in endpoint.previous_secrets])


@router.patch("/{endpoint_id}", response_model=EndpointPublic, responses=NOT_FOUND)
def update_endpoint(endpoint_id: str, body: EndpointUpdate, key: Admin, svc: Svc) -> EndpointPublic:
    """Change the URL, events, filter or description; ``enabled: true`` re-enables a disabled endpoint."""
    return _found(lambda: svc.webhook_service.update(endpoint_id, body)).public()


@router.delete("/{endpoint_id}", status_code=204, response_class=Response, responses=NOT_FOUND)
def delete_endpoint(endpoint_id: str, key: Admin, svc: Svc) -> Response:
    _found(lambda: svc.webhook_service.delete(endpoint_id))
    return Response(status_code=204)


@router.post("/{endpoint_id}/rotate", response_model=EndpointWithSecret, responses=NOT_FOUND)
def rotate_secret(endpoint_id: str, key: Admin, svc: Svc, body: RotateRequest | None = None) -> EndpointWithSecret:
    """A new secret; the old one keeps signing beside it for ``grace_hours`` (so deliveries carry both)."""
    grace = timedelta(hours=(body or RotateRequest()).grace_hours)
    endpoint = _found(lambda: svc.webhook_service.rotate(endpoint_id, grace=grace))
    return EndpointWithSecret(**endpoint.public().model_dump(), secret=endpoint.secret)


@router.get("/{endpoint_id}/deliveries", response_model=Page[DeliveryAttempt],
            responses={**NOT_FOUND, 422: {"description": "invalid cursor or range"}})
def list_deliveries(endpoint_id: str, key: Admin, svc: Svc, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                    cursor: Annotated[str | None, Query(max_length=2000)] = None,
                    since: datetime | None = None, until: datetime | None = None) -> Page[DeliveryAttempt]:
    """Every delivery attempt, newest first: outcome, HTTP status, latency, a response excerpt."""
    for value in (since, until):
        if value is not None and value.tzinfo is None:
            raise HTTPException(422, "since and until need a time zone (e.g. 2026-01-01T00:00:00Z)")
    start = _start(cursor, attributes={"pk", "sk"}, pk_prefix=keys.webhook_partition(endpoint_id))
    items, last = _found(lambda: svc.webhook_service.attempts(endpoint_id, limit=limit, start=start, since=since,
                                                              until=until))
    return Page[DeliveryAttempt](data=items, next_cursor=_cursor(last))


@router.post("/{endpoint_id}/replay", status_code=202, response_model=ReplayResult,
             responses={**NOT_FOUND, 422: {"description": "neither or both of event_id and since; too many"}})
def replay(endpoint_id: str, body: ReplayRequest, key: Admin, svc: Svc) -> ReplayResult:
    """Deliver again one logged event, or every event attempted in a time range (at most 1000)."""
    try:
        ids = _found(lambda: svc.webhook_service.replay(endpoint_id, event_id=body.event_id, since=body.since,
                                                        until=body.until))
    except ReplayTooLarge as exc:
        raise HTTPException(422, str(exc)) from None
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    return ReplayResult(replayed=ids)
