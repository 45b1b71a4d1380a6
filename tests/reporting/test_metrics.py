"""Queue lag: measured from the oldest unfinished job, published to CloudWatch (moto server)."""

from __future__ import annotations

from jetmail.aws.clients import aws_client
from jetmail.devstack.stack import StackState, wait_until
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
