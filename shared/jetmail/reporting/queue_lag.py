"""Queue lag for the worker service's autoscaling: the age of the oldest job each queue has not
finished, published by the scheduler tick as the CloudWatch metric ``jetmail/QueueLag`` (seconds,
dimension ``Queue``) — the metric template.yaml's scaling policies track. Zero is published too, so
the service scales back in.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors

from jetmail.queue import QueueError
from jetmail.queue.subjects import PRIORITIES, consumer_name, job_subject
from jetmail.services import QUEUES

logger = logging.getLogger("jetmail.reporting")


async def queue_lag(queue: Any, name: str, now: datetime | None = None) -> float:
    """Seconds since the oldest unfinished job of ``name`` was enqueued (0 when there is none)."""
    now = now or datetime.now(UTC)
    oldest = 0.0
    for priority in PRIORITIES:
        try:
            info = await queue.js.consumer_info(queue.config.stream, consumer_name(name, priority))
        except nats.js.errors.NotFoundError:
            continue
        if not (info.num_pending or 0) + (info.num_ack_pending or 0):
            continue
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        try:
            msg = await queue.js.get_msg(queue.config.stream, seq=floor + 1, next=True,
                                         subject=job_subject(name, priority))
        except nats.js.errors.NotFoundError:
            continue
        if msg.time is not None:
            oldest = max(oldest, (now - msg.time).total_seconds())
    return max(oldest, 0.0)


def publish_queue_lag(services: Any) -> dict[str, float]:
    """Measure and publish every queue's lag; nothing (an empty dict, a warning logged) when JetStream does
    not answer (a leader election, an outage): the scaling policy keeps its last value until the next tick."""
    async def measure(q: Any) -> dict[str, float]:
        return {name: await queue_lag(q, name) for name in QUEUES}

    try:
        lags: dict[str, float] = services.queue.run(measure)
    except (nats.errors.Error, QueueError, TimeoutError) as exc:
        logger.warning("queue lag not measured this tick: %s", exc or type(exc).__name__)
        return {}
    if services.settings.metrics_enabled:
        from jetmail.aws.clients import aws_client

        aws_client("cloudwatch", services.settings).put_metric_data(Namespace="jetmail", MetricData=[
            {"MetricName": "QueueLag", "Dimensions": [{"Name": "Queue", "Value": name}], "Value": lag,
             "Unit": "Seconds"} for name, lag in lags.items()])
    return lags
