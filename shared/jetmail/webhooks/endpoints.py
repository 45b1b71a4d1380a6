"""Webhook endpoints: where events go, which ones, and the secrets that sign them.

One row per endpoint in the main table (``keys.webhook_endpoint``), listed through gsi1. A secret is
``whsec_`` and 32 random bytes in base64 (the Standard Webhooks format). A rotation keeps the previous
secret for a grace period, during which every delivery carries a signature by each.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table
from jetmail.webhooks.events import EVENT_TYPES, EventType

logger = logging.getLogger("jetmail.webhooks")

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)


class EndpointNotFound(LookupError):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_endpoint_id() -> str:
    return "whe_" + secrets.token_hex(10)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class EndpointFilter(BaseModel):
    """Optional narrowing: only events whose message has this category, tag or campaign."""

    model_config = ConfigDict(extra="forbid")
    category: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=128)
    campaign_id: str | None = Field(default=None, max_length=128)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an absolute http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("url must not carry credentials")
    if parts.fragment:
        raise ValueError("url must not have a fragment")
    return value


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=8, max_length=2000)
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1,
                                    description="the event types to deliver (default: all)")
    filter: EndpointFilter = Field(default_factory=EndpointFilter)
    description: str | None = Field(default=None, max_length=500)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return _check_url(value)


class EndpointUpdate(BaseModel):
    """The fields to change; ``enabled: true`` turns a disabled endpoint back on."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    events: list[EventType] | None = Field(default=None, min_length=1)
    filter: EndpointFilter | None = None
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)


class EndpointPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    filter: EndpointFilter
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = None
    created_at: str
    updated_at: str
    secret_rotated_at: str | None = None


class Endpoint(EndpointPublic):
    """An endpoint with what signs its deliveries: the secret, and the previous ones still in their grace."""

    secret: str
    previous_secrets: list[dict[str, Any]] = Field(default_factory=list)

    def signing_secrets(self, now: float | None = None) -> list[str]:
        at = time.time() if now is None else now
        return [self.secret] + [s["secret"] for s in self.previous_secrets if float(s["until"]) > at]

    def wants(self, kind: str) -> bool:
        return self.enabled and kind in self.events

    def public(self) -> EndpointPublic:
        return EndpointPublic.model_validate(self.model_dump(include=set(EndpointPublic.model_fields)))


class EndpointStore:
    """Endpoints in the main table; every method is one DynamoDB request unless it says otherwise."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def create(self, body: EndpointCreate) -> Endpoint:
        now = _now_iso()
        endpoint = Endpoint(id=new_endpoint_id(), url=body.url, events=list(dict.fromkeys(body.events)),
                            filter=body.filter, description=body.description, enabled=True, created_at=now,
                            updated_at=now, secret=new_secret())
        self.table.put(self._item(endpoint), condition="attribute_not_exists(pk)")
        return endpoint

    def _item(self, endpoint: Endpoint) -> dict[str, Any]:
        return keys.webhook_endpoint(endpoint.id).item(gsi1pk=keys.WEBHOOKS,
                                                        gsi1sk=keys.by_time(endpoint.created_at, endpoint.id),
                                                        **endpoint.model_dump(mode="json"))

    def get(self, endpoint_id: str) -> Endpoint:
        item = self.table.get(*keys.webhook_endpoint(endpoint_id))
        if item is None:
            raise EndpointNotFound(f"no webhook endpoint {endpoint_id!r}")
        return Endpoint.model_validate(item)

    def list_all(self) -> list[Endpoint]:
        """Every endpoint, oldest first: one Query per page of gsi1 (a handful of endpoints is one)."""
        return [Endpoint.model_validate(i) for i in self.table.query_all(pk=keys.WEBHOOKS, index="gsi1")]

    def list_page(self, *, limit: int, start: dict[str, Any] | None = None
                  ) -> tuple[list[Endpoint], dict[str, Any] | None]:
        items, last = self.table.query(pk=keys.WEBHOOKS, index="gsi1", limit=limit, start=start)
        return [Endpoint.model_validate(i) for i in items], last

    def update(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        """Read, change, write back conditionally (two requests)."""
        endpoint = self.get(endpoint_id)
        # null leaves a field as it is, except the description, which it clears
        changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None or k == "description"}
        if changes.get("enabled"):
            changes["disabled_reason"] = None
        updated = endpoint.model_copy(update={**changes, "updated_at": _now_iso()})
        updated = Endpoint.model_validate(updated.model_dump())
        self._write_back(updated)
        return updated

    def _write_back(self, endpoint: Endpoint) -> None:
        try:
            self.table.put(self._item(endpoint), condition="attribute_exists(pk)")
        except ConditionFailed:
            raise EndpointNotFound(f"no webhook endpoint {endpoint.id!r}") from None

    def rotate(self, endpoint_id: str, *, grace: timedelta) -> Endpoint:
        """A new secret; the current one keeps signing (beside it) for ``grace``. Two requests."""
        endpoint = self.get(endpoint_id)
        now = time.time()
        kept = [s for s in endpoint.previous_secrets if float(s["until"]) > now]
        if grace.total_seconds() > 0:
            kept.append({"secret": endpoint.secret, "until": now + grace.total_seconds()})
        rotated = endpoint.model_copy(update={"secret": new_secret(), "previous_secrets": kept,
                                              "secret_rotated_at": _now_iso(), "updated_at": _now_iso()})
        self._write_back(rotated)
        return rotated

    def disable(self, endpoint_id: str, *, reason: str) -> bool:
        """Turn an endpoint off (410 from the receiver, or a day of failures); False if it was off already."""
        try:
            self.table.update(*keys.webhook_endpoint(endpoint_id),
                              expression="SET #e = :f, disabled_reason = :r, updated_at = :u",
                              names={"#e": "enabled"}, params={":f": False, ":r": reason[:300], ":u": _now_iso(),
                                                              ":t": True},
                              condition="attribute_exists(pk) AND #e = :t")
        except ConditionFailed:
            return False
        return True

    def delete(self, endpoint_id: str) -> None:
        """Its logged events and attempts expire with their TTL."""
        try:
            self.table.delete(*keys.webhook_endpoint(endpoint_id), condition="attribute_exists(pk)")
        except ConditionFailed:
            raise EndpointNotFound(f"no webhook endpoint {endpoint_id!r}") from None


class EndpointCache:
    """The endpoint list, re-read at most every ``ttl_s`` seconds per process (one Query), thread-safe.

    ``endpoints`` is the worker's view: it reads the table when the list is older than ``ttl_s``. ``wanted``
    is the send path's: it never waits on the table. It answers from the list while it is younger than
    ``ttl_s`` and, once half of that has passed, has a background thread read it again; with no list that
    young (the first call, ``ttl_s`` 0, an unreachable table) it answers None: not known.
    """

    def __init__(self, store: EndpointStore, *, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._endpoints: list[Endpoint] = []
        self._read_at = -float("inf")
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._refreshing = False

    def endpoints(self) -> list[Endpoint]:
        # one reader at a time (not a Query per caller when the list expires), and never under the lock
        # ``wanted`` takes, which the send path must get at once
        with self._read_lock:
            if time.monotonic() - self._read_at >= self.ttl_s:
                endpoints = self.store.list_all()
                with self._lock:
                    self._endpoints, self._read_at = endpoints, time.monotonic()
            return self._endpoints

    def wanted(self) -> set[str] | None:
        """The event types at least one enabled endpoint subscribes to, or None when not known; no request."""
        with self._lock:
            age = time.monotonic() - self._read_at
            if age >= self.ttl_s / 2 and not self._refreshing and self.ttl_s > 0:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="jetmail-webhook-endpoints", daemon=True).start()
            if age >= self.ttl_s:
                return None
            return {kind for e in self._endpoints if e.enabled for kind in e.events}

    def _refresh(self) -> None:
        try:
            endpoints = self.store.list_all()
        except Exception as exc:  # the next call tries again; until then the list ages into "not known"
            logger.warning("webhook endpoints not re-read: %s", exc)
            endpoints = None
        with self._lock:
            if endpoints is not None:
                self._endpoints = endpoints
                self._read_at = time.monotonic()
            self._refreshing = False
