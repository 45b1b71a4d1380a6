"""Logs, metrics and traces, set up in one place for the Lambda functions and the worker.

- **Logs** are JSON lines from the AWS Lambda Powertools formatter, ``service`` = ``jetmail``. In Lambda every
  line carries a ``correlation_id`` (API Gateway request id, SNS message id, EventBridge event id) and the
  Lambda context; in the worker every line written while a job runs carries the job's ``job_id``, ``task``,
  ``queue``, ``attempt`` and the ids in its payload (``message_id``, ``campaign_id``).
- **Metrics** are CloudWatch embedded metric format (EMF) records, namespace ``jetmail``: the functions print
  them through the Powertools ``Metrics`` decorator at the end of each invocation; the worker, when
  ``settings.metrics_enabled``, every few seconds (CloudWatch Logs turns the records into metrics on Lambda
  and on Fargate alike, no PutMetricData call or permission needed).
- **Traces**: Lambda's own X-Ray segment (``Tracing: Active``) always; the Powertools ``Tracer`` and the X-Ray
  SDK (subsegments for every AWS call) only when ``POWERTOOLS_TRACE_DISABLED`` is not true (template.yaml
  parameter ``XRaySdkTracing``): the SDK and its patching add ~100-300 ms to every cold start, so they are not
  even imported otherwise. Outside Lambda the Tracer switches itself off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from jetmail.messaging.providers.base import OutboundMessage, Provider, SendResult

SERVICE = "jetmail"
NAMESPACE = "jetmail"

# Correlation ids, as Powertools JMESPath expressions into each function's event
CORRELATION_API = "requestContext.requestId"
CORRELATION_SES_EVENTS = "Records[0].Sns.MessageId || requestContext.requestId"
CORRELATION_SCHEDULER = "id"

# EMF metric names (namespace "jetmail", dimension "service"); README lists them for operators
EMAILS_SENT = "EmailsSent"
EMAILS_FAILED = "EmailsFailed"
SEND_LATENCY = "SendLatency"
QUEUE_WAIT = "QueueWait"
SES_EVENT_METRICS = {"bounce": "Bounces", "complaint": "Complaints", "delivery": "Deliveries",
                     "reject": "Rejects", "delivery_delay": "DeliveryDelays", "rendering_failure": "RenderingFailures",
                     "open": "Opens", "click": "Clicks", "send": "SesSends"}

Handler = Callable[[dict[str, Any], Any], Any]


# ---------------------------------------------------------------------------------------------------- Lambda


def lambda_logger() -> Logger:
    """The functions' Powertools Logger: the stdlib logger ``jetmail``, parent of every ``jetmail.*`` logger, so
    the core package's own log lines come out as JSON with the correlation id too."""
    return Logger(service=SERVICE)


def lambda_metrics() -> Metrics:
    """The functions' EMF metrics; every instance shares one metric set, flushed by ``observed``."""
    return Metrics(namespace=NAMESPACE, service=SERVICE)


def sdk_tracing_enabled() -> bool:
    """Whether the X-Ray SDK traces the functions: Powertools' own switch, read the way Powertools reads it."""
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in ("1", "true", "yes", "on")


def observed(*, correlation_id_path: str) -> Callable[[Handler], Handler]:
    """Wrap a Lambda handler with the Powertools Logger (Lambda context, correlation id), Metrics (flushed as
    EMF after each invocation, plus a ColdStart metric) and, when SDK tracing is on, Tracer."""
    logger = lambda_logger()
    metrics = lambda_metrics()
    tracer = None
    if sdk_tracing_enabled():
        from aws_lambda_powertools import Tracer

        tracer = Tracer(service=SERVICE)

    def decorate(handler: Handler) -> Handler:
        traced = tracer.capture_lambda_handler(handler) if tracer is not None else handler
        measured = metrics.log_metrics(traced, capture_cold_start_metric=True)
        logged: Handler = logger.inject_lambda_context(measured, correlation_id_path=correlation_id_path,
                                                       clear_state=True)
        return functools.wraps(handler)(logged)

    return decorate


def count_api_response(response: Mapping[str, Any]) -> None:
    """One ``ApiRequests`` per invocation, and ``ApiServerErrors`` for a 5xx answer."""
    metrics = lambda_metrics()
    metrics.add_metric(name="ApiRequests", unit=MetricUnit.Count, value=1)
    if int(response.get("statusCode") or 0) >= 500:
        metrics.add_metric(name="ApiServerErrors", unit=MetricUnit.Count, value=1)


def count_ses_events(event: Mapping[str, Any]) -> Counter[str]:
    """Count the SES events an SNS-triggered invocation carries by kind (Bounces, Complaints, Deliveries...).

    Counted from the notifications themselves, so the metric reflects what SES reported, duplicates included;
    a record that is not an SES message is left to the intake to report.
    """
    from jetmail.deliverability.ses_events import SesEventError, parse_ses_message

    kinds: Counter[str] = Counter()
    for record in event.get("Records") or []:
        sns = record.get("Sns") if isinstance(record, dict) else None
        message = sns.get("Message") if isinstance(sns, dict) else None
        if not isinstance(message, str):
            continue
        try:
            kinds.update(str(e.kind) for e in parse_ses_message(message))
        except (SesEventError, ValueError):
            continue
    metrics = lambda_metrics()
    metrics.add_metric(name="SesEventRecords", unit=MetricUnit.Count, value=len(event.get("Records") or []))
    for kind, count in kinds.items():
        if kind in SES_EVENT_METRICS:
            metrics.add_metric(name=SES_EVENT_METRICS[kind], unit=MetricUnit.Count, value=count)
    return kinds


def count_tick(summary: Mapping[str, Any]) -> None:
    """What one scheduler tick did (queue lag itself goes out as ``jetmail/QueueLag``, see
    jetmail.reporting.queue_lag)."""
    metrics = lambda_metrics()
    metrics.add_metric(name="CampaignsStarted", unit=MetricUnit.Count, value=len(summary.get("started") or []))
    metrics.add_metric(name="CampaignsFinished", unit=MetricUnit.Count, value=len(summary.get("finished") or []))
    metrics.add_metric(name="ReputationActions", unit=MetricUnit.Count,
                       value=len(summary.get("reputation_actions") or []))


# ---------------------------------------------------------------------------------------------------- worker


class JobContextFilter(logging.Filter):
    """Adds the logger's name and the running job's fields (``jetmail.queue.worker.job_log_context``) to every
    record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # imported here: the functions import this module too, and the job layer (nats) is worker code
        from jetmail.queue.worker import job_log_context

        if not hasattr(record, "logger"):
            record.logger = record.name  # which part spoke: jetmail.queue.worker, nats, botocore...
        fields = job_log_context.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def configure_worker_logging(level: str = "INFO", *, stream: Any = None) -> logging.Handler:
    """JSON log lines on stdout for the whole worker process (jetmail, nats, botocore alike), each one written
    during a job carrying that job's ids; replaces whatever handlers the root logger had."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LambdaPowertoolsFormatter(service=SERVICE, utc=True))
    handler.addFilter(JobContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class WorkerMetrics:
    """EMF records from a long-running worker: values accumulate, and ``run`` prints them every ``interval``
    seconds (Powertools also prints early once a metric holds 100 values)."""

    def __init__(self, *, interval: float = 10.0) -> None:
        self.metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
        self.interval = interval

    def sent(self, latency_ms: float) -> None:
        self.metrics.add_metric(name=EMAILS_SENT, unit=MetricUnit.Count, value=1)
        self.metrics.add_metric(name=SEND_LATENCY, unit=MetricUnit.Milliseconds, value=round(latency_ms, 2))

    def failed(self) -> None:
        self.metrics.add_metric(name=EMAILS_FAILED, unit=MetricUnit.Count, value=1)

    def queue_wait(self, seconds: float) -> None:
        self.metrics.add_metric(name=QUEUE_WAIT, unit=MetricUnit.Seconds, value=round(max(seconds, 0.0), 3))

    def flush(self) -> None:
        if self.metrics.metric_set:
            self.metrics.flush_metrics()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()


class MeteredProvider:
    """A ``Provider`` that times and counts every send of the one it wraps (EMF when metrics are on) and logs
    each outcome with the message's ids. Both delivery paths, transactional and campaign, send through it."""

    def __init__(self, inner: Provider, *, metrics: WorkerMetrics | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.metrics = metrics
        self.log = logging.getLogger("jetmail.messaging.delivery.provider")

    async def send(self, message: OutboundMessage) -> SendResult:
        # imported here: the functions import this module too, and only the worker sends (no function's cold
        # start needs the provider package)
        from jetmail.messaging.providers.base import DeliveryError, PermanentDeliveryError

        ids = {key: message.tags[key] for key in ("message_id", "campaign_id") if message.tags.get(key)}
        started = time.perf_counter()
        try:
            result = await self.inner.send(message)
        except DeliveryError as exc:
            permanent = isinstance(exc, PermanentDeliveryError)
            if self.metrics is not None:
                self.metrics.failed()
            self.log.warning("send failed (%s): %s", "permanent" if permanent else "temporary", exc.reason,
                             extra={**ids, "provider": self.name})
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        if self.metrics is not None:
            self.metrics.sent(latency_ms)
        if self.log.isEnabledFor(logging.DEBUG):  # (the fields cost more than the call when it logs nothing)
            self.log.debug("sent", extra={**ids, "provider": self.name, "latency_ms": round(latency_ms, 1),
                                          "provider_message_id": result.provider_message_id})
        return result

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # anything else a caller uses of the concrete provider (e.g. the SES client) stays reachable
        return getattr(self.inner, name)


async def stop_metrics(task: asyncio.Task[None] | None, metrics: WorkerMetrics | None) -> None:
    """Stop the flush loop and print what is left (worker shutdown)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if metrics is not None:
        metrics.flush()
