"""The audit log: who did which management action, when, to what, and what changed.

One item per action in the main table: ``AUDIT`` / ``<time>#<id>``, so "newest first between two
times" is one Query per page. Management actions are rare (keys, templates, campaign actions,
suppressions, erasures), so a single partition is far from DynamoDB's per-partition limits.
Entries expire through TTL after ``audit_retention_days``.

The actor is whoever the current context acts for: the API binds the request's API key id
(``jetmail.api.actor.bind_actor``), the CLI binds ``cli:<user>``, and anything else (the scheduler
tick, a worker) records as ``system``. Services record their own actions, so a route or command
never repeats it. ``changes`` is a small summary; secrets and bodies are never recorded, and people
are named by their pseudonym (``hmac:…``), never by address.
"""

from __future__ import annotations

import base64
import getpass
import json
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from jetmail.storage import keys

# The API's audit dependency imports this module on every cold start: the table adapter (boto3) is not imported
# here, and the audited template store lives with the templates (jetmail.messaging.templates).
if TYPE_CHECKING:
    from jetmail.storage.table import Table

MAX_VALUE_CHARS = 200
MAX_CHANGES = 20
# never recorded, whatever a caller passes
HIDDEN_KEYS = frozenset({"token", "secret", "password", "digest", "html", "text", "body", "context",
                         "sample_context", "key"})
PAGE = 200

ActorSource = str | Callable[[], str | None]
_actor: ContextVar[ActorSource | None] = ContextVar("jetmail_audit_actor", default=None)


class InvalidAuditQuery(ValueError):
    pass


class AuditEntry(BaseModel):
    id: str
    at: str = Field(description="UTC, ISO 8601")
    actor: str = Field(description="`key:<api key id>`, `cli:<user>`, `subscriber` (a public subscribe form or "
                                   "confirmation link) or `system`")
    action: str = Field(description="e.g. `campaign.sent`, `template.saved`, `contact.erased`")
    target: str
    changes: dict[str, Any] = Field(default_factory=dict)


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for older entries; absent at the end")


def current_actor() -> str:
    source = _actor.get()
    value = source() if callable(source) else source
    return value or "system"


def bind_actor(source: ActorSource) -> None:
    """Act for ``source`` (a name, or a callable asked at record time) in the current context."""
    _actor.set(source)


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in a bare container: still a CLI action
        user = "unknown"
    return f"cli:{user}"


def summarize(changes: dict[str, Any] | None) -> dict[str, Any]:
    """A small, secret-free copy: hidden keys dropped, long values cut, at most ``MAX_CHANGES`` keys."""
    out: dict[str, Any] = {}
    for key, value in list((changes or {}).items())[:MAX_CHANGES]:
        if key.lower() in HIDDEN_KEYS:
            continue
        out[key] = _small(value)
    return out


def _small(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return summarize(value)
    if isinstance(value, list | tuple | set):
        return [_small(v) for v in list(value)[:MAX_CHANGES]]
    text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _parse_time(value: str | datetime | None, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidAuditQuery(f"{name} must be an ISO 8601 time, e.g. 2026-11-28T09:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


class AuditLog:
    def __init__(self, table: Table, *, retention_days: int = 730) -> None:
        self.table = table
        self.retention = timedelta(days=retention_days)

    def record(self, action: str, *, target: str, changes: dict[str, Any] | None = None,
               actor: str | None = None) -> AuditEntry:
        now = datetime.now(UTC)
        entry = AuditEntry(id=f"aud_{secrets.token_hex(8)}", at=now.isoformat(), actor=actor or current_actor(),
                           action=action, target=target, changes=summarize(changes))
        row = {**entry.model_dump(mode="json"), "changes": json.dumps(entry.changes, sort_keys=True),
               "expires_at": int(time.time() + self.retention.total_seconds())}
        self.table.put(keys.audit_entry(entry.at, entry.id).item(**row))
        return entry

    def query(self, *, since: str | datetime | None = None, until: str | datetime | None = None,
              action: str | None = None, actor: str | None = None, target: str | None = None, limit: int = 100,
              cursor: str | None = None) -> AuditPage:
        """Newest first. ``action`` matches a whole action or a prefix ending in ``.`` (``campaign.``). One
        Query per 200 entries read, until ``limit`` match."""
        low = _parse_time(since, "since") or ""
        high = _parse_time(until, "until") or "9999"
        if low and high != "9999" and low > high:
            raise InvalidAuditQuery("since is after until")
        # sort keys are "<time>#<id>": "~" sorts after "#" so an entry at exactly `until` is included
        upper = _decode(cursor) if cursor else high + "~"
        found: list[AuditEntry] = []
        start: dict[str, Any] | None = None
        while len(found) < limit:
            items, start = self.table.query(pk=keys.AUDIT, sk_between=(low or "0", upper), forward=False, limit=PAGE,
                                            start=start)
            for item in items:
                if item["sk"] == upper:  # the cursor's own entry
                    continue
                if action and not (item["action"] == action or (action.endswith(".") and
                                                               item["action"].startswith(action))):
                    continue
                if actor and item["actor"] != actor:
                    continue
                if target and item["target"] != target:
                    continue
                found.append(AuditEntry.model_validate({**item, "changes": json.loads(item.get("changes") or "{}")}))
                if len(found) == limit:
                    return AuditPage(entries=found, next_cursor=_encode(item["sk"]))
            if not start:
                break
        return AuditPage(entries=found)


def _encode(sort_key: str) -> str:
    return base64.urlsafe_b64encode(sort_key.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII input
        raise InvalidAuditQuery("invalid cursor") from None
    if "#aud_" not in value:
        raise InvalidAuditQuery("invalid cursor")
    return value
