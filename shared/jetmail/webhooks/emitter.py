"""The one call every source makes: ``emitter.emit(events)``.

It never sends anything, never raises, and never waits on a table: it is on the send path, and every
DynamoDB request or CPU millisecond it spent would be taken from sending. It drops the events no enabled
endpoint subscribes to, judged from the endpoint list this process cached (``EndpointCache.wanted``, which
a background thread keeps fresh, one Query every ``webhook_cache_s / 2`` while the process emits), and puts
the rest on the job layer as ONE fan-out job (``webhook_fanout`` on the ``webhooks`` queue), whose id is
derived from the event ids so a source that runs twice enqueues it once. When the list is not known (the
first emit of a process, ``webhook_cache_s`` 0, an unreachable table) every event goes, and the worker's
fan-out decides. With no subscriber, an emit costs nothing but a set lookup; with one, a single publish.

A source made without an emitter (a unit test, a tool with no job layer) holds ``DISABLED``, which emits
nothing on purpose.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from jetmail.webhooks.events import WebhookEvent

if TYPE_CHECKING:
    from jetmail.webhooks.endpoints import EndpointCache

logger = logging.getLogger("jetmail.webhooks")

WEBHOOK_QUEUE = "webhooks"
FANOUT_TASK = "webhook_fanout"
DELIVER_TASK = "webhook_deliver"
DELIVERY_BATCH = 100  # events in one delivery job, at most (a campaign batch's sends fit one)


# The two tasks' payloads. Sources build them as models: the job layer then dumps them once, where a dict
# of dumped events would be validated into models and dumped again.
class FanoutJob(BaseModel):
    events: list[WebhookEvent] = Field(min_length=1, max_length=1000)


class DeliverJob(BaseModel):
    endpoint_id: str = Field(min_length=1, max_length=64)
    events: list[WebhookEvent] = Field(min_length=1, max_length=DELIVERY_BATCH)
    replay: bool = False
    attempt: int = Field(default=1, ge=1, description="the number of this job's first attempt at its events")
    first_at: AwareDatetime | None = Field(default=None, description="when the events' first attempt was "
                                                                     "enqueued (default: this job's enqueue)")

    @model_validator(mode="before")
    @classmethod
    def _one_event(cls, data: Any) -> Any:
        # a job enqueued before jobs carried several events (a worker upgraded with jobs in the stream)
        if isinstance(data, dict) and "event" in data and "events" not in data:
            data = {**data, "events": [data["event"]]}
            del data["event"]
        return data


class WebhookSink(Protocol):
    def emit(self, events: Iterable[WebhookEvent | None]) -> None: ...


class Enqueuer(Protocol):
    def enqueue(self, task: str, *, queue: str, priority: str = ..., job_id: str | None = ...,
                max_retries: int = ..., payload: Any = ..., **kwargs: Any) -> Any: ...


class _Disabled:
    """Emits nothing: for sources made without the job layer."""

    def emit(self, events: Iterable[WebhookEvent | None]) -> None:
        return None


DISABLED: WebhookSink = _Disabled()


def fanout_job_id(events: list[WebhookEvent]) -> str:
    digest = hashlib.sha256(",".join(e.id for e in events).encode()).hexdigest()
    return f"whf.{digest[:32]}"


class Emitter:
    def __init__(self, *, endpoints: EndpointCache, queue: Enqueuer) -> None:
        self.endpoints = endpoints
        self.queue = queue

    def emit(self, events: Iterable[WebhookEvent | None]) -> None:
        """Enqueue one fan-out job for the events some endpoint wants; logs (never raises) on failure."""
        try:
            given = [e for e in events if e is not None]
            if not given:
                return
            wanted = self.endpoints.wanted()
            chosen = given if wanted is None else [e for e in given if e.type in wanted]
            if not chosen:
                return
            self.queue.enqueue(FANOUT_TASK, queue=WEBHOOK_QUEUE, priority="normal", job_id=fanout_job_id(chosen),
                               max_retries=10, payload=FanoutJob(events=chosen))
        except Exception as exc:
            # a webhook must never fail (or undo) what caused it: the send or the bounce is recorded already
            logger.warning("webhook events not enqueued: %s", exc)
