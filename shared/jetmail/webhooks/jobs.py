"""The webhook tasks ``jetmail worker webhooks`` runs (registered when jetmail.tasks imports this module)."""

from __future__ import annotations

import logging

from jetmail.queue import JobContext, Retry, task
from jetmail.webhooks.emitter import DELIVER_TASK, FANOUT_TASK, DeliverJob, FanoutJob
from jetmail.worker_services import worker_services

logger = logging.getLogger("jetmail.webhooks")


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
