"""The worker side: fan one emitted job out to the matching endpoints, and deliver one event to one endpoint.

Fan-out (``webhook_fanout``): the endpoints come from the per-process cache; each event of a message whose
record carries ``metadata`` or ``tags`` gets them (one GetItem per message not yet carrying them, read here
and never on the send path); per endpoint the matching events are kept in its log (one BatchWriteItem per
25) and one ``webhook_deliver`` job per event is published (pipelined, ids ``whd.<endpoint>.<event>`` so a
repeated fan-out publishes nothing twice).

Delivery (``webhook_deliver``): one signed POST, one log row. A 2xx ends it; 410 disables the endpoint;
anything else retries, from ``webhook_retry_base_s`` doubling up to ``webhook_retry_max_s`` with +/- 25 %
jitter, until the delivery has failed for ``webhook_give_up_s`` (a day): then the endpoint is disabled and
an alert goes out. A destination refused by the address check is logged and not retried.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from jetmail.webhooks import signing, transport
from jetmail.webhooks.deliveries import DeliveryAttempt, DeliveryLog
from jetmail.webhooks.emitter import DELIVER_TASK, WEBHOOK_QUEUE
from jetmail.webhooks.endpoints import Endpoint, EndpointCache, EndpointNotFound, EndpointStore
from jetmail.webhooks.events import WebhookEvent

if TYPE_CHECKING:
    from jetmail.queue import Queue

logger = logging.getLogger("jetmail.webhooks")

DELIVERY_MAX_RETRIES = 1000  # the give-up time ends a delivery long before this count
# threads for the table reads and writes of deliveries in flight (each waits on DynamoDB, not the CPU); the
# default executor's few threads would make every delivery queue behind the others' log writes
TABLE_THREADS = 32
T = TypeVar("T")


def delivery_job_id(endpoint_id: str, event_id: str) -> str:
    return f"whd.{endpoint_id}.{event_id}"


@dataclass(frozen=True, slots=True)
class Policy:
    allow_private: bool = False
    timeout_s: float = 5.0
    retry_base_s: float = 5.0
    retry_max_s: float = 7200.0
    give_up_s: float = 86400.0

    def delay(self, attempt: int) -> float:
        capped = min(self.retry_base_s * 2.0 ** min(attempt - 1, 40), self.retry_max_s)
        return capped * random.uniform(0.75, 1.25)


class Dispatcher:
    def __init__(self, *, store: EndpointStore, cache: EndpointCache, log: DeliveryLog, queue: Queue,
                 policy: Policy, records: Callable[[str], dict[str, Any] | None] | None = None,
                 alert: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.cache = cache
        self.log = log
        self.queue = queue
        self.policy = policy
        self.records = records  # a message's record by id (for its metadata and tags)
        self.alert = alert
        self.client = httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False, trust_env=False,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=100))
        self._threads = ThreadPoolExecutor(max_workers=TABLE_THREADS, thread_name_prefix="jetmail-webhooks")

    async def close(self) -> None:
        await self.client.aclose()
        self._threads.shutdown(wait=False)

    async def _blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    # ---- fan-out
    async def fan_out(self, events: Sequence[WebhookEvent]) -> int:
        """Publish the delivery jobs of these events; returns how many."""
        endpoints = [e for e in await self._blocking(self.cache.endpoints) if e.enabled]
        if not endpoints:
            return 0
        events = await self._blocking(self._with_metadata, list(events))
        published = 0
        for endpoint in endpoints:
            matching = [e for e in events if endpoint.wants(e.type) and e.matches(**endpoint.filter.model_dump())]
            if not matching:
                continue
            await self._blocking(self.log.keep_events, endpoint.id, matching)
            await self.queue.enqueue_many(
                DELIVER_TASK, [{"endpoint_id": endpoint.id, "event": e.model_dump(mode="json")} for e in matching],
                queue=WEBHOOK_QUEUE, job_ids=[delivery_job_id(endpoint.id, e.id) for e in matching],
                max_retries=DELIVERY_MAX_RETRIES)
            published += len(matching)
        return published

    def _with_metadata(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        if self.records is None:
            return events
        found: dict[str, dict[str, Any] | None] = {}
        out = []
        for event in events:
            message_id = event.data.get("message_id")
            lacking = "metadata" not in event.data and "tags" not in event.data
            if not message_id or not lacking or str(message_id).startswith("cm_"):
                out.append(event)
                continue
            if message_id not in found:
                found[message_id] = self.records(message_id)
            record = found[message_id] or {}
            extra = {k: record[k] for k in ("metadata", "tags") if record.get(k)}
            out.append(event.model_copy(update={"data": {**event.data, **extra}}) if extra else event)
        return out

    # ---- one delivery
    async def _endpoint(self, endpoint_id: str) -> Endpoint | None:
        for endpoint in await self._blocking(self.cache.endpoints):
            if endpoint.id == endpoint_id:
                return endpoint
        try:  # newer than the cache
            return await self._blocking(self.store.get, endpoint_id)
        except EndpointNotFound:
            return None

    async def deliver(self, endpoint_id: str, event: WebhookEvent, *, attempt: int, first_at: datetime,
                      replay: bool = False) -> float | None:
        """One attempt; returns the delay before the next one, or None when the delivery is over."""
        endpoint = await self._endpoint(endpoint_id)
        if endpoint is None or not endpoint.enabled:
            logger.info("webhook %s to %s dropped: the endpoint is gone or disabled", event.id, endpoint_id)
            return None
        body = event.model_dump_json().encode()
        headers = signing.headers(endpoint.signing_secrets(), msg_id=event.id, timestamp=int(time.time()), body=body)
        at = datetime.now(UTC).isoformat()
        message_id = event.data.get("message_id")
        row = {"endpoint_id": endpoint_id, "event_id": event.id, "event_type": event.type, "attempt": attempt,
               "at": at, "replay": replay, "message_id": message_id if isinstance(message_id, str) else None}
        try:
            answer = await transport.post(self.client, endpoint.url, body=body, headers=headers,
                                          allow_private=self.policy.allow_private)
        except transport.UnsafeDestination as exc:
            logger.warning("webhook %s to %s refused: %s", event.id, endpoint_id, exc)
            await self._blocking(self.log.record, DeliveryAttempt(**row, outcome="refused", error=str(exc)))
            return None
        ok = answer.status is not None and 200 <= answer.status < 300
        await self._blocking(self.log.record, DeliveryAttempt(
            **row, outcome="succeeded" if ok else "failed", status_code=answer.status, latency_ms=answer.latency_ms,
            response=answer.excerpt, error=answer.error))
        if ok:
            return None
        if answer.status == 410:
            await self._disable(endpoint, "the receiver answered 410 Gone")
            return None
        failing_for = (datetime.now(UTC) - first_at).total_seconds()
        if failing_for >= self.policy.give_up_s:
            await self._disable(endpoint, f"deliveries failed for {failing_for / 3600:.1f} h "
                                          f"(last: {answer.status or answer.error})")
            return None
        return self.policy.delay(attempt)

    async def _disable(self, endpoint: Endpoint, reason: str) -> None:
        if not await self._blocking(self.store.disable, endpoint.id, reason=reason):
            return
        message = f"jetmail webhooks: endpoint {endpoint.id} ({endpoint.url}) disabled: {reason}"
        logger.warning(message)
        if self.alert is not None:
            try:
                await self._blocking(self.alert, message)
            except Exception as exc:  # the endpoint is disabled either way
                logger.warning("webhook alert not published: %s", exc)
