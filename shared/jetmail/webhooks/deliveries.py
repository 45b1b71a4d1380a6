"""The delivery log: each event as sent to an endpoint (what a replay sends again) and every attempt to
deliver it (status, latency, a response excerpt), in the endpoint's partition, both with a TTL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from jetmail.storage import keys
from jetmail.storage.table import Table
from jetmail.webhooks.events import WebhookEvent

Outcome = Literal["succeeded", "failed", "refused"]


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


class DeliveryLog:
    def __init__(self, table: Table, *, retention_days: int = 30) -> None:
        self.table = table
        self.retention_s = retention_days * 86400

    def _expires(self) -> int:
        return int(time.time() + self.retention_s)

    def events(self, endpoint_id: str, event_ids: Sequence[str]) -> list[WebhookEvent]:
        """BatchGetItem, 100 ids a request; ids no longer kept are left out."""
        wanted = [keys.webhook_event(endpoint_id, i) for i in dict.fromkeys(event_ids)]
        return [WebhookEvent.model_validate_json(item["event"]) for item in self.table.batch_get(wanted)]

    def record(self, endpoint_id: str, attempts: Sequence[DeliveryAttempt], *,
               keep: Sequence[WebhookEvent] = ()) -> int:
        """Log the attempts of one delivery job and keep the events ``keep`` names (what a replay sends
        again), together in one BatchWriteItem per 25 rows; returns the requests made. An attempt for a
        message's event is also indexed under the message (gsi1)."""
        expires = self._expires()
        rows = [keys.webhook_event(endpoint_id, e.id).item(event=e.model_dump_json(), expires_at=expires)
                for e in keep]
        for attempt in attempts:
            index = ({"gsi1pk": keys.webhook_message(attempt.message_id), "gsi1sk": attempt.at}
                     if attempt.message_id else {})
            rows.append(keys.webhook_attempt(endpoint_id, attempt.at, attempt.event_id, attempt.attempt)
                        .item(expires_at=expires, **index, **attempt.model_dump()))
        return self.table.batch_put(rows) if rows else 0

    def of_message(self, message_id: str, *, limit: int = 100) -> list[DeliveryAttempt]:
        """The latest ``limit`` attempts to deliver the events of one message, oldest first: one Query."""
        items, _ = self.table.query(pk=keys.webhook_message(message_id), index="gsi1", forward=False, limit=limit)
        return [DeliveryAttempt.model_validate(i) for i in reversed(items)]

    def attempts(self, endpoint_id: str, *, limit: int = 100, start: dict[str, Any] | None = None,
                 since: datetime | None = None, until: datetime | None = None
                 ) -> tuple[list[DeliveryAttempt], dict[str, Any] | None]:
        """One page, newest first; ``since``/``until`` bound it in time (one Query either way)."""
        pk = keys.webhook_partition(endpoint_id)
        if since is not None or until is not None:
            first = (since or datetime(1970, 1, 1, tzinfo=UTC)).astimezone(UTC).isoformat()
            last_at = (until or datetime.now(UTC)).astimezone(UTC).isoformat()
            low, high = keys.webhook_attempt_sk(first, "", 0), keys.webhook_attempt_sk(last_at, "\uffff", 9999)
            items, last = self.table.query(pk=pk, sk_between=(low, high), forward=False, limit=limit, start=start)
        else:
            items, last = self.table.query(pk=pk, sk_prefix=keys.WEBHOOK_ATTEMPT_PREFIX, forward=False, limit=limit,
                                           start=start)
        return [DeliveryAttempt.model_validate(i) for i in items], last
