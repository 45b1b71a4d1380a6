"""The webhook tasks ``jetmail worker webhooks`` runs (registered when jetmail.tasks imports this module)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from jetmail.queue import JobContext, Retry, task
from jetmail.webhooks.dispatch import DELIVERY_BATCH
from jetmail.webhooks.emitter import DELIVER_TASK, FANOUT_TASK
from jetmail.webhooks.events import WebhookEvent
from jetmail.worker_services import worker_services

logger = logging.getLogger("jetmail.webhooks")


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


@task(FANOUT_TASK, model=FanoutJob)
async def webhook_fanout(job: FanoutJob, ctx: JobContext) -> None:
    """Publish one delivery job per matching endpoint (per 100 events) of the events a source emitted."""
    published = await worker_services(ctx).webhooks.fan_out(job.events)
    logger.info("webhook fan-out of %d event(s): %d delivery job(s)", len(job.events), published)


@task(DELIVER_TASK, model=DeliverJob)
async def webhook_deliver(job: DeliverJob, ctx: JobContext) -> None:
    """POST each event to one endpoint; a failed event is retried with backoff, alone, until it succeeds or the
    endpoint is disabled."""
    dispatcher = worker_services(ctx).webhooks
    attempt = job.attempt + ctx.attempt - 1
    first_at = job.first_at or ctx.enqueued_at
    failed = await dispatcher.deliver_all(job.endpoint_id, job.events, attempt=attempt, first_at=first_at,
                                          replay=job.replay)
    if not failed:
        return
    if len(job.events) == 1:
        raise Retry(delay=failed[0].delay)
    await dispatcher.retry_later(job.endpoint_id, failed, attempt=attempt + 1, first_at=first_at, replay=job.replay)
