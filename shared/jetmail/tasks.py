"""The tasks ``jetmail worker`` runs: importing this module registers them.

A worker calls ``startup(resources)`` and ``shutdown(resources)`` from here when they exist; that is where
clients shared by all jobs of the process are created and closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from jetmail.observability import MeteredProvider, WorkerMetrics, stop_metrics
from jetmail.queue import JobContext, Retry, task

log = logging.getLogger("jetmail.tasks")


async def startup(resources: dict[str, Any]) -> None:
    """Make the process's clients once: settings, storage, renderer, provider."""
    from jetmail.campaigns.sender import BatchSender
    from jetmail.campaigns.signals import Journal, Leases, StateBoard, ensure_buckets
    from jetmail.config import get_settings
    from jetmail.delivery import Deliverer
    from jetmail.pipeline import SendPipeline
    from jetmail.policy import SuppressionPolicy
    from jetmail.providers import make_provider
    from jetmail.queue import Queue
    from jetmail.ratelimit import RateConfig, RateLimiter
    from jetmail.services import Services, queue_config
    from jetmail.stops import LiveStops, ensure_stream

    services = Services(get_settings())
    resources["services"] = services
    metrics = WorkerMetrics() if services.settings.metrics_enabled else None
    resources["metrics"] = metrics
    if metrics is not None:
        resources["metrics_task"] = asyncio.create_task(metrics.run())
    # every send, transactional or campaign, goes through this one wrapper: latency, counts, a log line
    resources["provider"] = MeteredProvider(make_provider(services.settings), metrics=metrics)
    queue = Queue(queue_config(services.settings))
    await queue.connect()
    await ensure_buckets(queue.js, replicas=services.settings.stream_replicas)
    await ensure_stream(queue.js, services.settings.stops_stream, replicas=services.settings.stream_replicas)
    resources["stops"] = LiveStops(queue.js, stream=services.settings.stops_stream, pseudonyms=services.pseudonyms)
    policy = SuppressionPolicy(store=services.suppressions, live=resources["stops"])
    resources["queue"] = queue
    limits = None
    if services.settings.provider == "ses":
        # on SES the account's own quota is the limit (the local stack's moto server answers it too)
        from jetmail.aws import aws_client
        from jetmail.ratelimit import limits_from_ses

        limits = limits_from_ses(aws_client("sesv2", services.settings))
    limiter = RateLimiter(queue.js, RateConfig.from_settings(services.settings, limits=limits),
                          worker_id=f"{socket.gethostname()}-{os.getpid()}")
    resources["limiter"] = limiter
    # the one send pipeline; transactional mail and campaign batches only wrap it
    pipeline = SendPipeline(composer=services.composer, provider=resources["provider"], limiter=limiter,
                            simulator=services.simulator, js=queue.js)
    from jetmail.submission import RawStore

    raw_store = RawStore(queue.js, ttl_s=services.settings.submission_retention_hours * 3600,
                         replicas=services.settings.stream_replicas)
    resources["deliverer"] = Deliverer(messages=services.messages.messages, templates=services.templates,
                                       pipeline=pipeline, policy=policy, stats=services.stats_table,
                                       raw_store=raw_store)
    resources["batch_sender"] = BatchSender(
        store=services.campaign_store, templates=services.templates, pipeline=pipeline, policy=policy,
        board=StateBoard(queue.js), leases=Leases(queue.js, ttl=queue.config.ack_wait), journal=Journal(queue.js),
        holder=f"{socket.gethostname()}-{os.getpid()}",
        process_concurrency=services.settings.campaign_sends_per_worker,
    )


async def shutdown(resources: dict[str, Any]) -> None:
    await stop_metrics(resources.get("metrics_task"), resources.get("metrics"))
    provider = resources.get("provider")
    if provider is not None:
        await provider.close()
    stops = resources.get("stops")
    if stops is not None:
        await stops.close()
    sender = resources.get("batch_sender")
    if sender is not None:
        await sender.board.close()
    limiter = resources.get("limiter")
    if limiter is not None:
        await limiter.close()  # gives unused reserved tokens back to the shared windows
    queue = resources.get("queue")
    if queue is not None:
        await queue.close()


class SendMessageJob(BaseModel):
    message_id: str = Field(min_length=1, max_length=64)


@task("send_message", model=SendMessageJob)
async def send_message(job: SendMessageJob, ctx: JobContext) -> None:
    """Deliver one transactional message (or sequence step); retried with backoff on temporary failures."""
    from jetmail.providers import TemporaryDeliveryError

    deliverer = ctx.resources["deliverer"]
    metrics = ctx.resources.get("metrics")
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


class ListReview(BaseModel):
    inactive_days: int = Field(default=180, ge=1)
    soft_bounces: int = Field(default=2, ge=1)


@task("list_review", model=ListReview)
def list_review(job: ListReview, ctx: JobContext) -> None:
    """Flag contacts with repeated soft bounces or no engagement for a while (attribute ``review``)."""
    from jetmail.reputation import review_contacts

    flagged = review_contacts(ctx.resources["services"], inactive_days=job.inactive_days,
                              soft_bounces=job.soft_bounces)
    log.info("list review flagged %d contact(s)", flagged)
