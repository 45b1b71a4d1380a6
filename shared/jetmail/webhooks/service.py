"""Managing endpoints, reading their delivery log and replaying it: what the API and the CLI call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from jetmail.webhooks.deliveries import DeliveryAttempt, DeliveryLog
from jetmail.webhooks.dispatch import DELIVERY_MAX_RETRIES
from jetmail.webhooks.emitter import DELIVER_TASK, DELIVERY_BATCH, WEBHOOK_QUEUE, DeliverJob
from jetmail.webhooks.endpoints import Endpoint, EndpointCreate, EndpointStore, EndpointUpdate
from jetmail.webhooks.events import WebhookEvent

REPLAY_LIMIT = 1000  # events one replay request sends again, at most


class ReplayTooLarge(ValueError):
    pass


class WebhookService:
    def __init__(self, *, store: EndpointStore, log: DeliveryLog, queue: Any) -> None:
        self.store = store
        self.log = log
        self.queue = queue  # a SyncClient: enqueue_many

    def create(self, body: EndpointCreate) -> Endpoint:
        return self.store.create(body)

    def get(self, endpoint_id: str) -> Endpoint:
        return self.store.get(endpoint_id)

    def list_page(self, *, limit: int, start: dict[str, Any] | None = None
             ) -> tuple[list[Endpoint], dict[str, Any] | None]:
        return self.store.list_page(limit=limit, start=start)

    def update(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        return self.store.update(endpoint_id, body)

    def delete(self, endpoint_id: str) -> None:
        self.store.delete(endpoint_id)

    def rotate(self, endpoint_id: str, *, grace: timedelta) -> Endpoint:
        return self.store.rotate(endpoint_id, grace=grace)

    def attempts(self, endpoint_id: str, *, limit: int, start: dict[str, Any] | None = None,
                 since: datetime | None = None, until: datetime | None = None
                 ) -> tuple[list[DeliveryAttempt], dict[str, Any] | None]:
        self.store.get(endpoint_id)  # 404 for an unknown endpoint rather than an empty log
        return self.log.attempts(endpoint_id, limit=limit, start=start, since=since, until=until)

    def replay(self, endpoint_id: str, *, event_id: str | None = None, since: datetime | None = None,
               until: datetime | None = None) -> list[str]:
        """Deliver again one event, or every event attempted between ``since`` and ``until``, as new jobs
        (each with its full retry schedule); returns the event ids. One Query page per 1000 attempts read,
        a BatchGetItem per 100 events and one pipelined publish."""
        self.store.get(endpoint_id)
        if event_id is not None:
            ids = [event_id]
        else:
            ids = []
            start: dict[str, Any] | None = None
            while True:
                attempts, start = self.log.attempts(endpoint_id, limit=1000, start=start, since=since, until=until)
                ids.extend(a.event_id for a in attempts)
                ids = list(dict.fromkeys(ids))
                if len(ids) > REPLAY_LIMIT:
                    raise ReplayTooLarge(f"more than {REPLAY_LIMIT} events in that range: narrow it")
                if not start:
                    break
        events = self.log.events(endpoint_id, ids)
        if event_id is not None and not events:
            raise LookupError(f"event {event_id!r} is not in the delivery log of {endpoint_id}")
        stamp = int(time.time() * 1000)
        self._enqueue(endpoint_id, events, stamp)
        return [e.id for e in events]

    def _enqueue(self, endpoint_id: str, events: Sequence[WebhookEvent], stamp: int) -> None:
        """One delivery job per ``DELIVERY_BATCH`` events, each event POSTed on its own."""
        chunks = [events[i:i + DELIVERY_BATCH] for i in range(0, len(events), DELIVERY_BATCH)]
        if not chunks:
            return
        self.queue.enqueue_many(DELIVER_TASK, [DeliverJob(endpoint_id=endpoint_id, events=list(c), replay=True)
                                               for c in chunks],
                                queue=WEBHOOK_QUEUE, job_ids=[f"whr.{endpoint_id}.{c[0].id}.{len(c)}.{stamp}"
                                                              for c in chunks],
                                max_retries=DELIVERY_MAX_RETRIES)
