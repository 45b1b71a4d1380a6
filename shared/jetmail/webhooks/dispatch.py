"""The worker side: fan one emitted job out to the matching endpoints, and deliver a job's events to one endpoint.

Fan-out (``webhook_fanout``): the endpoints come from the per-process cache. Events of a transactional
message that provider feedback reported (delivered, bounced, opened...) get the message's ``metadata`` and
``tags`` from its record, one BatchGetItem per 100 messages, and only when some endpoint wants them; the
send path's own events carry them already. Per endpoint, the matching events go out as delivery jobs of at
most ``DELIVERY_BATCH`` events each (pipelined, ids derived from the endpoint and the event ids, so a
repeated fan-out publishes nothing twice). The fan-out writes nothing to the table.

Delivery (``webhook_deliver``): one signed POST per event (the Standard Webhooks way: one event a request),
at most ``POST_CONCURRENCY`` at once, to the address the endpoint's name resolved to once for the job, on
the worker's one ``transport.Client`` (connections kept per address); then the job's attempts are logged:
one log row for the job, and per event a row holding the event (what a replay sends again) with its first
attempt, or a later attempt at a message's event (its timeline), 25 rows a BatchWriteItem (``deliveries``).
A 2xx ends an event's delivery; 410 disables the endpoint (the job's other events still unsent are
dropped); anything else is retried, each failed event alone as a single-event job,
from ``webhook_retry_base_s`` doubling up to ``webhook_retry_max_s`` with +/- 25 % jitter, until the
delivery has failed for ``webhook_give_up_s`` (a day): then the endpoint is disabled and an alert goes out.
A destination refused by the address check is logged and not retried.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from jetmail.storage import keys
from jetmail.storage.table import Table
from jetmail.webhooks import signing, transport
from jetmail.webhooks.deliveries import DeliveryAttempt, DeliveryLog
from jetmail.webhooks.emitter import DELIVER_TASK, DELIVERY_BATCH, WEBHOOK_QUEUE, DeliverJob
from jetmail.webhooks.endpoints import Endpoint, EndpointCache, EndpointNotFound, EndpointStore
from jetmail.webhooks.events import WebhookEvent

if TYPE_CHECKING:
    from jetmail.queue import Queue

logger = logging.getLogger("jetmail.webhooks")

DELIVERY_MAX_RETRIES = 1000  # the give-up time ends a delivery long before this count
POST_CONCURRENCY = 16  # requests one delivery job has in flight to its endpoint, at most
# the events whose source built them from the message record, metadata and tags included
_FROM_RECORD = frozenset({"message.queued", "message.sent", "message.failed"})
LOG_WRITERS = 4  # delivery jobs writing their attempts to the table at once, at most
# threads for the table reads and writes of deliveries in flight (each waits on DynamoDB, not the CPU); the
# default executor's few threads would make every delivery queue behind the others' log writes
TABLE_THREADS = 32
T = TypeVar("T")

# a message's metadata and tags, by message id, for the ids given (those with no record left out)
Records = Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]]


def delivery_job_id(endpoint_id: str, events: Sequence[WebhookEvent]) -> str:
    digest = hashlib.sha256(",".join(e.id for e in events).encode()).hexdigest()
    return f"whd.{endpoint_id}.{digest[:32]}"


def retry_job_id(endpoint_id: str, event_id: str, attempt: int) -> str:
    return f"whd.{endpoint_id}.{event_id}.{attempt}"


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    return (items[i:i + size] for i in range(0, len(items), size))


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


@dataclass(frozen=True, slots=True)
class Failed:
    """An event whose attempt failed and that is to be tried again after ``delay`` seconds."""

    event: WebhookEvent
    delay: float


class Dispatcher:
    def __init__(self, *, store: EndpointStore, cache: EndpointCache, log: DeliveryLog, queue: Queue,
                 policy: Policy, records: Records | None = None,
                 alert: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.cache = cache
        self.log = log
        self.queue = queue
        self.policy = policy
        self.records = records  # messages' metadata and tags, for the events provider feedback caused
        self.alert = alert
        # one client for every delivery: it keeps connections per receiver address for the POSTs that follow
        self._http = transport.Client(timeout_s=policy.timeout_s)
        self._threads = ThreadPoolExecutor(max_workers=TABLE_THREADS, thread_name_prefix="jetmail-webhooks")
        self._log_writers = asyncio.Semaphore(LOG_WRITERS)

    async def close(self) -> None:
        await self._http.aclose()
        self._threads.shutdown(wait=False)

    async def _blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    # ---- fan-out
    async def fan_out(self, events: Sequence[WebhookEvent]) -> int:
        """Publish the delivery jobs of these events; returns how many were new (not de-duplicated)."""
        endpoints = [e for e in await self._blocking(self.cache.endpoints) if e.enabled]
        if not endpoints:
            return 0
        wanted = [e for e in dict((e.id, e) for e in events).values()
                  if any(endpoint.wants(e.type) for endpoint in endpoints)]
        if not wanted:
            return 0
        wanted = await self._with_metadata(wanted)
        published = 0
        for endpoint in endpoints:
            matching = [e for e in wanted if endpoint.wants(e.type) and e.matches(**endpoint.filter.model_dump())]
            if not matching:
                continue
            chunks = list(_chunks(matching, DELIVERY_BATCH))
            refs = await self.queue.enqueue_many(
                DELIVER_TASK, [DeliverJob(endpoint_id=endpoint.id, events=list(chunk)) for chunk in chunks],
                queue=WEBHOOK_QUEUE, job_ids=[delivery_job_id(endpoint.id, chunk) for chunk in chunks],
                max_retries=DELIVERY_MAX_RETRIES)
            published += sum(not ref.duplicate for ref in refs)
        return published

    async def _with_metadata(self, events: list[WebhookEvent]) -> list[WebhookEvent]:
        lacking = {str(e.data["message_id"]) for e in events
                   if e.type not in _FROM_RECORD and e.data.get("message_id")
                   and not str(e.data["message_id"]).startswith("cm_")  # a campaign's: no record of its own
                   and "metadata" not in e.data and "tags" not in e.data}
        if self.records is None or not lacking:
            return events
        found = await self._blocking(self.records, sorted(lacking))
        out = []
        for event in events:
            record = found.get(str(event.data.get("message_id"))) if event.data.get("message_id") else None
            extra = {k: record[k] for k in ("metadata", "tags") if record and record.get(k)}
            out.append(event.model_copy(update={"data": {**event.data, **extra}}) if extra else event)
        return out

    # ---- delivery
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
        """One attempt of one event; returns the delay before the next one, or None when the delivery is over."""
        failed = await self.deliver_all(endpoint_id, [event], attempt=attempt, first_at=first_at, replay=replay)
        return failed[0].delay if failed else None

    async def deliver_all(self, endpoint_id: str, events: Sequence[WebhookEvent], *, attempt: int,
                          first_at: datetime, replay: bool = False) -> list[Failed]:
        """One attempt of each event (``attempt`` is its number, ``first_at`` when the first was enqueued),
        logged; returns the events to try again, each with its delay (none when every delivery is over)."""
        endpoint = await self._endpoint(endpoint_id)
        if endpoint is None or not endpoint.enabled:
            logger.info("%d webhook(s) to %s dropped: the endpoint is gone or disabled", len(events), endpoint_id)
            return []
        secrets = endpoint.signing_secrets()
        rows: list[DeliveryAttempt] = []
        try:
            address = await transport.destination(endpoint.url, allow_private=self.policy.allow_private)
        except transport.UnsafeDestination as exc:
            logger.warning("%d webhook(s) to %s refused: %s", len(events), endpoint_id, exc)
            rows = [self._attempt(endpoint_id, e, attempt=attempt, replay=replay, outcome="refused", error=str(exc))
                    for e in events]
            await self._record(endpoint_id, rows, keep=() if replay or attempt > 1 else events)
            return []
        gone = asyncio.Event()  # a 410 to one event: the job's events not yet sent stay unsent
        limit = asyncio.Semaphore(POST_CONCURRENCY)
        bodies: dict[str, str] = {}  # each event's JSON as POSTed, kept in the log as it went

        async def one(event: WebhookEvent) -> transport.Answer | None:
            async with limit:
                if gone.is_set():
                    return None
                text = bodies[event.id] = event.model_dump_json()
                body = text.encode()
                headers = signing.headers(secrets, msg_id=event.id, timestamp=int(time.time()), body=body)
                answer = await transport.post(self._http, endpoint.url, body=body, headers=headers,
                                              allow_private=self.policy.allow_private, address=address)
                if answer.status == 410:
                    gone.set()
                return answer

        answers = await asyncio.gather(*(one(e) for e in events))
        sent = [(e, a) for e, a in zip(events, answers, strict=True) if a is not None]
        rows = [self._attempt(endpoint_id, e, attempt=attempt, replay=replay,
                              outcome="succeeded" if _ok(a) else "failed", status_code=a.status,
                              latency_ms=a.latency_ms, response=a.excerpt, error=a.error) for e, a in sent]
        await self._record(endpoint_id, rows, keep=() if replay or attempt > 1 else [e for e, _ in sent],
                           bodies=bodies)
        failures = [(e, a) for e, a in sent if not _ok(a)]
        if not failures:
            return []
        if gone.is_set():
            await self._disable(endpoint, "the receiver answered 410 Gone")
            return []
        failing_for = (datetime.now(UTC) - first_at).total_seconds()
        if failing_for >= self.policy.give_up_s:
            last = failures[-1][1]
            await self._disable(endpoint, f"deliveries failed for {failing_for / 3600:.1f} h "
                                          f"(last: {last.status or last.error})")
            return []
        return [Failed(event=e, delay=self.policy.delay(attempt)) for e, _ in failures]

    async def _record(self, endpoint_id: str, rows: Sequence[DeliveryAttempt], *,
                      keep: Sequence[WebhookEvent], bodies: Mapping[str, str] | None = None) -> None:
        """Log a job's attempts, at most ``LOG_WRITERS`` jobs at a time, so the bookkeeping of many deliveries
        never crowds the table the send path uses. A write that still fails is a gap in the log, not a reason
        to POST the job's events again: they were delivered (or are retried) all the same."""
        async with self._log_writers:
            try:
                await self._blocking(self.log.record, endpoint_id, rows, keep=keep, bodies=bodies)
            except Exception as exc:
                logger.warning("%d webhook attempt(s) to %s not logged: %s", len(rows), endpoint_id, exc)

    async def retry_later(self, endpoint_id: str, failed: Sequence[Failed], *, attempt: int, first_at: datetime,
                          replay: bool = False) -> None:
        """Enqueue each failed event as a single-event delivery job after its delay; ``attempt`` is the
        number its next attempt will have (the job ids carry it: a repeat publishes nothing twice)."""
        await asyncio.gather(*(
            self.queue.enqueue_in(f.delay, DELIVER_TASK, queue=WEBHOOK_QUEUE,
                                  job_id=retry_job_id(endpoint_id, f.event.id, attempt),
                                  max_retries=DELIVERY_MAX_RETRIES,
                                  payload={"endpoint_id": endpoint_id, "events": [f.event.model_dump(mode="json")],
                                           "replay": replay, "attempt": attempt, "first_at": first_at.isoformat()})
            for f in failed))

    @staticmethod
    def _attempt(endpoint_id: str, event: WebhookEvent, *, attempt: int, replay: bool,
                 **outcome: Any) -> DeliveryAttempt:
        message_id = event.data.get("message_id")
        return DeliveryAttempt(endpoint_id=endpoint_id, event_id=event.id, event_type=event.type, attempt=attempt,
                               at=datetime.now(UTC).isoformat(), replay=replay,
                               message_id=message_id if isinstance(message_id, str) else None, **outcome)

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


def _ok(answer: transport.Answer) -> bool:
    return answer.status is not None and 200 <= answer.status < 300


def message_records(table: Table) -> Records:
    """``Records`` read from the main table: one BatchGetItem per 100 messages, only ``metadata`` and ``tags``."""

    def read(message_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        items = table.batch_get([keys.message(i) for i in message_ids], projection=("id", "metadata", "tags"))
        return {str(item["id"]): item for item in items if item.get("id")}

    return read
