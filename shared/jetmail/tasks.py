"""The tasks ``jetmail worker`` runs: importing this module registers them.

A worker calls ``startup(resources)`` and ``shutdown(resources)`` from here: they make and close the
``WorkerServices`` every job of the process shares.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from jetmail.queue import JobContext, Retry, task
from jetmail.worker_services import KEY, WorkerServices, worker_services

log = logging.getLogger("jetmail.tasks")


async def startup(resources: dict[str, Any]) -> None:
    """Make the process's clients once (``WorkerServices``): every job of the process shares them."""
    from jetmail.config import get_settings

    resources[KEY] = await WorkerServices.start(get_settings())


async def shutdown(resources: dict[str, Any]) -> None:
    made = resources.pop(KEY, None)
    if made is not None:
        await made.close()


class SendMessageJob(BaseModel):
    message_id: str = Field(min_length=1, max_length=64)


@task("send_message", model=SendMessageJob)
async def send_message(job: SendMessageJob, ctx: JobContext) -> None:
    """Deliver one transactional message (or sequence step); retried with backoff on temporary failures."""
    from jetmail.messaging.providers import TemporaryDeliveryError

    worker = worker_services(ctx)
    deliverer, metrics = worker.deliverer, worker.metrics
    if metrics is not None and ctx.attempt == 1:
        metrics.queue_wait((datetime.now(UTC) - ctx.enqueued_at).total_seconds())
    try:
        outcome = await deliverer.deliver(job.message_id, attempt=ctx.attempt, max_attempts=ctx.max_retries + 1)
    except TemporaryDeliveryError as exc:
        raise Retry(delay=exc.retry_after) from exc
    log.info("message %s: %s", job.message_id, outcome)


class DemoHello(BaseModel):
    name: str


class DemoFail(BaseModel):
    reason: str = "demo_fail always fails"


@task("demo_hello", model=DemoHello)
async def demo_hello(job: DemoHello, ctx: JobContext) -> None:
    """Log a greeting: the smallest job that shows the pipeline end to end."""
    log.info("hello, %s (job %s, attempt %d)", job.name, ctx.job_id, ctx.attempt)


@task("demo_fail", model=DemoFail)
async def demo_fail(job: DemoFail, ctx: JobContext) -> None:
    """Fail every attempt, so the job ends in the dead-letter stream after its retries."""
    raise RuntimeError(job.reason)


# the campaign tasks register themselves on import
from jetmail.campaigns import jobs as _campaign_jobs  # noqa: E402, F401
from jetmail.webhooks import jobs as _webhook_jobs  # noqa: E402, F401


class ListReview(BaseModel):
    inactive_days: int = Field(default=180, ge=1)
    soft_bounces: int = Field(default=2, ge=1)


@task("list_review", model=ListReview)
def list_review(job: ListReview, ctx: JobContext) -> None:
    """Flag contacts with repeated soft bounces or no engagement for a while (attribute ``review``)."""
    from jetmail.deliverability.reputation import review_contacts

    flagged = review_contacts(worker_services(ctx).services, inactive_days=job.inactive_days,
                              soft_bounces=job.soft_bounces)
    log.info("list review flagged %d contact(s)", flagged)
