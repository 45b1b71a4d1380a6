"""The webhook tasks ``jetmail worker webhooks`` runs (registered when jetmail.tasks imports this module)."""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from jetmail.queue import JobContext, Retry, task
from jetmail.webhooks.emitter import DELIVER_TASK, FANOUT_TASK
from jetmail.webhooks.events import WebhookEvent
from jetmail.worker_services import worker_services

logger = logging.getLogger("jetmail.webhooks")


class FanoutJob(BaseModel):
    events: list[WebhookEvent] = Field(min_length=1, max_length=1000)


class DeliverJob(BaseModel):
    endpoint_id: str = Field(min_length=1, max_length=64)
    event: WebhookEvent
    replay: bool = False


@task(FANOUT_TASK, model=FanoutJob)
async def webhook_fanout(job: FanoutJob, ctx: JobContext) -> None:
    """Publish one delivery job per (matching endpoint, event) of the events a source emitted."""
    published = await worker_services(ctx).webhooks.fan_out(job.events)
    logger.info("webhook fan-out of %d event(s): %d delivery job(s)", len(job.events), published)


@task(DELIVER_TASK, model=DeliverJob)
async def webhook_deliver(job: DeliverJob, ctx: JobContext) -> None:
    """POST one event to one endpoint; retried with backoff until it succeeds or the endpoint is disabled."""
    delay = await worker_services(ctx).webhooks.deliver(job.endpoint_id, job.event, attempt=ctx.attempt,
                                                       first_at=ctx.enqueued_at, replay=job.replay)
    if delay is not None:
        raise Retry(delay=delay)
