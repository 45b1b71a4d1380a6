"""The one call every source makes: ``emitter.emit(events)``.

It never sends anything and never raises. It drops the events no enabled endpoint subscribes to (from the
endpoint list cached per process, one Query every ``webhook_cache_s``), and puts the rest on the job layer
as ONE fan-out job (``webhook_fanout`` on the ``webhooks`` queue), whose id is derived from the event ids so
a source that runs twice enqueues it once. A worker then fans it out to the matching endpoints. With no
subscriber, an emit costs nothing but the cache check; with one, a single publish.

A source made without an emitter (a unit test, a tool with no job layer) holds ``DISABLED``, which emits
nothing on purpose.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from jetmail.webhooks.events import WebhookEvent

if TYPE_CHECKING:
    from jetmail.webhooks.endpoints import EndpointCache

logger = logging.getLogger("jetmail.webhooks")

WEBHOOK_QUEUE = "webhooks"
FANOUT_TASK = "webhook_fanout"
DELIVER_TASK = "webhook_deliver"


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
            try:
                wanted = self.endpoints.wanted()
            except Exception as exc:  # the table is unreachable: let the fan-out job decide later
                logger.warning("webhook endpoints unreadable (%s); enqueueing the events anyway", exc)
                wanted = {e.type for e in given}
            chosen = [e for e in given if e.type in wanted]
            if not chosen:
                return
            self.queue.enqueue(FANOUT_TASK, queue=WEBHOOK_QUEUE, priority="normal", job_id=fanout_job_id(chosen),
                               max_retries=10, payload={"events": [e.model_dump(mode="json") for e in chosen]})
        except Exception as exc:
            # a webhook must never fail (or undo) what caused it: the send or the bounce is recorded already
            logger.warning("webhook events not enqueued: %s", exc)
