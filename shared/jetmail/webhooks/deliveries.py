"""The delivery log, in the endpoint's partition, every row with a TTL:

- one log row per delivery job (``DLV#<time>#...``) holding every attempt the job made, packed as one JSON
  string (status, latency, a response excerpt each): the log pages and a replay's time range read these;
- one row per event sent (``EVT#<event id>``): the event itself (what a replay sends again) and its first
  attempt, indexed under its message (gsi1) for the message's timeline;
- for a message's event, one row per later attempt (a retry, a replay), indexed the same way.

So a delivered event costs one row and a hundredth, written 25 to a BatchWriteItem, where it cost an event
row and an attempt row of a dozen attributes. Rows of the older shape (one attempt each, attributes
unpacked) are read as well, until their TTL ends them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from jetmail.storage import keys
from jetmail.storage.table import Table, key_values, resume_after
from jetmail.webhooks.events import WebhookEvent

Outcome = Literal["succeeded", "failed", "refused"]

# a log row's packed attempts, at most (DynamoDB's item limit is 400 KB; 100 attempts with 4 KB excerpts
# would pass it, so a job's attempts fill as many rows as they need)
LOG_ROW_BYTES = 300_000


class DeliveryAttempt(BaseModel):
    endpoint_id: str
    event_id: str
    event_type: str
    message_id: str | None = None
    attempt: int
    outcome: Outcome
    status_code: int | None = None
    latency_ms: int | None = None
    response: str = ""
    error: str | None = None
    at: str
    replay: bool = False


_ATTEMPTS = TypeAdapter(list[DeliveryAttempt])


def _packed_rows(packed: Sequence[str]) -> list[tuple[int, str]]:
    """The attempts (each one's JSON) as JSON arrays of at most ``LOG_ROW_BYTES``: (index of the first, array)."""
    rows: list[tuple[int, str]] = []
    first, size = 0, 0
    for n, one in enumerate(packed):
        if n > first and size + len(one) + 1 > LOG_ROW_BYTES:
            rows.append((first, "[" + ",".join(packed[first:n]) + "]"))
            first, size = n, 0
        size += len(one) + 1
    if first < len(packed):
        rows.append((first, "[" + ",".join(packed[first:]) + "]"))
    return rows


def _logged(item: Mapping[str, Any]) -> list[DeliveryAttempt]:
    """The attempts of one log row, as written (oldest first)."""
    if "attempts" in item:
        return _ATTEMPTS.validate_json(item["attempts"])
    return [DeliveryAttempt.model_validate(item)]  # a row of the older shape: one attempt, unpacked


def _indexed(item: Mapping[str, Any]) -> DeliveryAttempt:
    """The attempt a row indexed under a message holds."""
    if "attempt" in item and isinstance(item["attempt"], str):
        return DeliveryAttempt.model_validate_json(item["attempt"])
    return DeliveryAttempt.model_validate(item)  # an attempt row of the older shape


class DeliveryLog:
    def __init__(self, table: Table, *, retention_days: int = 30) -> None:
        self.table = table
        self.retention_s = retention_days * 86400

    def _expires(self) -> int:
        return int(time.time() + self.retention_s)

    def events(self, endpoint_id: str, event_ids: Sequence[str]) -> list[WebhookEvent]:
        """BatchGetItem, 100 ids a request; ids no longer kept are left out."""
        wanted = [keys.webhook_event(endpoint_id, i) for i in dict.fromkeys(event_ids)]
        return [WebhookEvent.model_validate_json(item["event"])
                for item in self.table.batch_get(wanted, projection=("event",)) if item.get("event")]

    def record(self, endpoint_id: str, attempts: Sequence[DeliveryAttempt], *,
               keep: Sequence[WebhookEvent] = (), bodies: Mapping[str, str] | None = None) -> int:
        """Log the attempts of one delivery job, and keep the events ``keep`` names (what a replay sends again)
        each with its attempt: one BatchWriteItem per 25 rows; returns the requests made. ``bodies``: events'
        JSON by id, as the job POSTed them (else each is dumped here)."""
        expires = self._expires()
        made = bodies or {}
        packed = [a.model_dump_json() for a in attempts]
        rows: list[dict[str, Any]] = []
        for first, array in _packed_rows(packed):
            head = attempts[first]
            rows.append(keys.webhook_attempt(endpoint_id, head.at, head.event_id, head.attempt)
                        .item(attempts=array, expires_at=expires))
        kept = {e.id: e for e in keep}
        indexed: set[tuple[str, str, int]] = set()
        for attempt, one in zip(attempts, packed, strict=True):
            index = ({"gsi1pk": keys.webhook_message(attempt.message_id), "gsi1sk": attempt.at}
                     if attempt.message_id else {})
            event = kept.pop(attempt.event_id, None)
            if event is not None:
                rows.append(keys.webhook_event(endpoint_id, event.id)
                            .item(event=made.get(event.id) or event.model_dump_json(), attempt=one,
                                  expires_at=expires, **index))
            elif index and (attempt.event_id, attempt.at, attempt.attempt) not in indexed:
                indexed.add((attempt.event_id, attempt.at, attempt.attempt))
                rows.append(keys.webhook_event_attempt(endpoint_id, attempt.event_id, attempt.at, attempt.attempt)
                            .item(attempt=one, expires_at=expires, **index))
        rows.extend(keys.webhook_event(endpoint_id, e.id).item(event=made.get(e.id) or e.model_dump_json(),
                                                               expires_at=expires)
                    for e in kept.values())  # kept without an attempt of this job
        return self.table.batch_put(rows) if rows else 0

    def of_message(self, message_id: str, *, limit: int = 100) -> list[DeliveryAttempt]:
        """The latest ``limit`` attempts to deliver the events of one message, oldest first: one Query."""
        items, _ = self.table.query(pk=keys.webhook_message(message_id), index="gsi1", forward=False, limit=limit)
        return [_indexed(i) for i in reversed(items)]

    def attempts(self, endpoint_id: str, *, limit: int = 100, start: dict[str, Any] | None = None,
                 since: datetime | None = None, until: datetime | None = None
                 ) -> tuple[list[DeliveryAttempt], dict[str, Any] | None]:
        """One page of ``limit`` attempts, newest first; ``since``/``until`` bound it in time. A page reads
        the log rows it needs (one Query, more only past 1 MB); its cursor may point inside a row."""
        pk = keys.webhook_partition(endpoint_id)
        skip, skip_in = 0, ""
        if start is not None:
            skip_in, skip = keys.webhook_log_position_parts(str(key_values(start).get("sk", "")))
            # a position inside a row: read from that row, which sorts just below it
            start = resume_after({"pk": pk, "sk": keys.webhook_log_position(skip_in, 0)}) if skip else start
        query: dict[str, Any] = {"sk_prefix": keys.WEBHOOK_ATTEMPT_PREFIX}
        if since is not None or until is not None:
            first = (since or datetime(1970, 1, 1, tzinfo=UTC)).astimezone(UTC).isoformat()
            last_at = (until or datetime.now(UTC)).astimezone(UTC).isoformat()
            query = {"sk_between": (keys.webhook_attempt_sk(first, "", 0),
                                    keys.webhook_attempt_sk(last_at, "\uffff", 9999))}
        page: list[DeliveryAttempt] = []
        while True:
            # each row holds one attempt at least: ``limit - len(page)`` rows are enough for the page
            items, more = self.table.query(pk=pk, forward=False, limit=limit - len(page), start=start, **query)
            for n, item in enumerate(items):
                logged = _logged(item)[::-1]  # newest first
                skip = skip if item["sk"] == skip_in else 0
                taken = logged[skip:skip + limit - len(page)]
                page.extend(taken)
                used, skip = skip + len(taken), 0
                if used < len(logged):
                    return page, resume_after({"pk": pk, "sk": keys.webhook_log_position(str(item["sk"]), used)})
                if len(page) == limit:
                    rest = n + 1 < len(items) or more is not None
                    return page, resume_after({"pk": pk, "sk": str(item["sk"])}) if rest else None
            if more is None:
                return page, None
            start = more
