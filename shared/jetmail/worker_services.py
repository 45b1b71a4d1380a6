"""What a worker process makes once at start and every job shares: one typed container.

``WorkerServices.start`` builds it (settings, storage, the NATS connection and its KV buckets, the provider, the
rate limiter, the live stop events, the one send pipeline and its two callers); ``close`` releases it in
reverse order. The job layer keeps it in the worker's resources under ``KEY``; a task reads it with
``worker_services(ctx)``, never by name from a dict.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from jetmail.campaigns.sender import BatchSender
    from jetmail.config import Settings
    from jetmail.deliverability.ratelimit import RateLimiter
    from jetmail.deliverability.stops import LiveStops
    from jetmail.kv import Kv
    from jetmail.messaging.delivery import Deliverer
    from jetmail.observability import MeteredProvider, WorkerMetrics
    from jetmail.queue import JobContext, Queue
    from jetmail.services import Services
    from jetmail.webhooks.dispatch import Dispatcher

KEY = "jetmail"


@dataclass
class WorkerServices:
    services: Services
    queue: Queue
    kv: Kv
    provider: MeteredProvider
    limiter: RateLimiter
    stops: LiveStops
    deliverer: Deliverer
    batch_sender: BatchSender
    webhooks: Dispatcher
    metrics: WorkerMetrics | None = None
    metrics_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings) -> WorkerServices:
        # a campaign's first plan job needs segments (~0.3 s to load here): loaded at start, not on the way
        # to the campaign's first message
        import jetmail.audience.segments  # noqa: F401
        from jetmail.aws.clients import aws_client
        from jetmail.campaigns.sender import BatchSender
        from jetmail.campaigns.signals import Journal, Leases, StateBoard
        from jetmail.deliverability.policy import SuppressionPolicy
        from jetmail.deliverability.ratelimit import RateConfig, RateLimiter, limits_from_ses
        from jetmail.deliverability.stops import LiveStops, ensure_stream
        from jetmail.kv import Kv
        from jetmail.messaging.delivery import Deliverer
        from jetmail.messaging.pipeline import SendPipeline
        from jetmail.messaging.providers import make_provider
        from jetmail.messaging.submission import RawStore
        from jetmail.observability import MeteredProvider, WorkerMetrics, stop_metrics
        from jetmail.queue import Queue
        from jetmail.services import Services, queue_config

        services = Services(settings)
        holder = f"{socket.gethostname()}-{os.getpid()}"
        metrics = WorkerMetrics() if settings.metrics_enabled else None
        metrics_task = asyncio.create_task(metrics.run()) if metrics is not None else None
        # every send, transactional or campaign, goes through this one wrapper: latency, counts, a log line
        provider = MeteredProvider(make_provider(settings), metrics=metrics)
        queue = Queue(queue_config(settings))
        stops: LiveStops | None = None
        try:
            await queue.connect()
            # every bucket of jetmail.kv.buckets, made when `jetmail init` has not run
            kv = Kv(queue.js, replicas=settings.stream_replicas)
            await kv.ensure()
            await ensure_stream(queue.js, settings.stops_stream, replicas=settings.stream_replicas)
            stops = LiveStops(queue.js, stream=settings.stops_stream, pseudonyms=services.pseudonyms)
            policy = SuppressionPolicy(store=services.suppressions, live=stops)
            # on SES the account's own quota is the limit (the local stack's moto server answers it too)
            limits = limits_from_ses(aws_client("sesv2", settings)) if settings.provider == "ses" else None
            limiter = RateLimiter(kv, RateConfig.from_settings(settings, limits=limits), worker_id=holder)
        except BaseException:
            if stops is not None:
                await stops.close()
            await stop_metrics(metrics_task, metrics)
            await provider.close()
            await queue.close()
            raise
        # the one send pipeline; transactional mail and campaign batches only wrap it
        pipeline = SendPipeline(composer=services.composer, provider=provider, limiter=limiter,
                                simulator=services.simulator, kv=kv, feedback=services.feedback)
        raw_store = RawStore(queue.js, ttl_s=settings.submission_retention_hours * 3600,
                             replicas=settings.stream_replicas)
        deliverer = Deliverer(messages=services.messages.messages, templates=services.templates, pipeline=pipeline,
                              policy=policy, stats=services.stats_table, raw_store=raw_store,
                              webhooks=services.webhooks)
        batch_sender = BatchSender(
            store=services.campaign_store, templates=services.templates, pipeline=pipeline, policy=policy,
            board=StateBoard(kv), leases=Leases(kv, ttl=queue.config.ack_wait), journal=Journal(queue.js),
            holder=holder, process_concurrency=settings.campaign_sends_per_worker, webhooks=services.webhooks,
        )
        webhooks = make_dispatcher(services, queue)
        return cls(services=services, queue=queue, kv=kv, provider=provider, limiter=limiter, stops=stops,
                   deliverer=deliverer, batch_sender=batch_sender, webhooks=webhooks, metrics=metrics,
                   metrics_task=metrics_task)

    async def close(self) -> None:
        from jetmail.observability import stop_metrics

        await stop_metrics(self.metrics_task, self.metrics)
        await self.provider.close()
        await self.webhooks.close()
        await self.stops.close()
        await self.batch_sender.board.close()
        await self.limiter.close()  # gives unused reserved tokens back to the shared windows
        await self.queue.close()


def make_dispatcher(services: Services, queue: Queue) -> Dispatcher:
    """The webhook fan-out and delivery of this worker: its HTTP client, the endpoint cache, the log."""
    from jetmail.webhooks.dispatch import Dispatcher, Policy, message_records

    settings = services.settings

    def alert(message: str) -> None:
        if settings.alerts_topic_arn:
            from jetmail.aws.clients import aws_client

            aws_client("sns", settings).publish(TopicArn=settings.alerts_topic_arn, Subject="jetmail webhook alert",
                                                Message=message)

    policy = Policy(allow_private=settings.webhook_allow_private, timeout_s=settings.webhook_timeout_s,
                    retry_base_s=settings.webhook_retry_base_s, retry_max_s=settings.webhook_retry_max_s,
                    give_up_s=settings.webhook_give_up_s)
    return Dispatcher(store=services.webhook_endpoints, cache=services.webhook_cache, log=services.webhook_log,
                      queue=queue, policy=policy, records=message_records(services.table), alert=alert)


def worker_services(ctx: JobContext) -> WorkerServices:
    """The container the worker made at start (``jetmail.tasks.startup``)."""
    return cast(WorkerServices, ctx.resources[KEY])
