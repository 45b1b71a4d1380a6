"""Queue lag: measured from the oldest unfinished job, published to CloudWatch (moto server)."""

from __future__ import annotations

import logging
from typing import Any

from jetmail.aws.clients import aws_client
from jetmail.devstack.stack import StackState, free_port, wait_until
from jetmail.reporting.queue_lag import QUEUES, publish_queue_lag, queue_lag
from jetmail.services import Services
from stacktools import make_settings


def test_lag_is_the_age_of_the_oldest_unfinished_job(services: Services, unique: str) -> None:
    name = f"lag_{unique}"
    services.queue.run(lambda q: q.ensure_consumers(name))
    assert services.queue.run(lambda q: queue_lag(q, name)) == 0.0
    # GIVEN a job nobody consumes
    services.queue.enqueue("demo_hello", queue=name, name="lag")
    # THEN its queue's lag grows with its age
    first = services.queue.run(lambda q: queue_lag(q, name))
    wait_until(lambda: services.queue.run(lambda q: queue_lag(q, name)) > first + 0.2, timeout=5,
               what="lag growing")


def test_tick_publishes_queue_lag_for_every_queue(stack: StackState, services: Services) -> None:
    settings = make_settings(stack, metrics_enabled=True)
    with_metrics = Services(settings)
    lags = publish_queue_lag(with_metrics)
    assert set(lags) == set(QUEUES)
    metrics = aws_client("cloudwatch", settings).list_metrics(Namespace="jetmail", MetricName="QueueLag")["Metrics"]
    published = {d["Value"] for m in metrics for d in m["Dimensions"] if d["Name"] == "Queue"}
    assert published >= set(QUEUES)


def test_a_tick_without_jetstream_skips_the_queue_lag_instead_of_failing(stack: StackState, caplog: Any) -> None:
    # GIVEN a job layer that does not answer (nothing listens where its NATS should be)
    settings = make_settings(stack, nats_url=f"nats://127.0.0.1:{free_port()}", metrics_enabled=True)
    unreachable = Services(settings)
    try:
        # WHEN the tick measures queue lag
        with caplog.at_level(logging.WARNING, logger="jetmail.reporting"):
            lags = publish_queue_lag(unreachable)
    finally:
        unreachable.queue.close()
    # THEN nothing is published and the tick goes on, with the reason logged
    assert lags == {}
    assert any("queue lag not measured" in r.getMessage() for r in caplog.records)
