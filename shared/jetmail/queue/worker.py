"""The consumer side: a long-running worker that pulls jobs by priority and runs them concurrently."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import logging
import os
import signal
import threading
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import nats.errors
from nats.aio.msg import Msg
from pydantic import ValidationError

from .client import Queue
from .config import QueueConfig
from .errors import PermanentFailure, QueueError, Retry
from .models import DeadLetter, DeadLetterReason, JobEnvelope, utcnow
from .pull import Puller, PullError
from .registry import Registry, TaskDef, describe_validation
from .registry import registry as default_registry
from .subjects import (
    HDR_DEAD_REASON,
    HDR_JOB_ID,
    HDR_MSG_ID,
    HDR_SCHEDULE_NEXT,
    HDR_SCHEDULER,
    PRIORITIES,
    check_queue,
    consumer_name,
    dlq_subject,
)

log = logging.getLogger("jetmail.queue.worker")

# The running job's fields for log records (a logging filter copies them onto each record): job_id, task,
# queue, priority, attempt, and the scalar ``*_id`` fields of its payload (message_id, campaign_id...). Each
# job runs in its own asyncio task, and threads it starts inherit the context, so jobs never see each other's.
job_log_context: ContextVar[Mapping[str, object] | None] = ContextVar("job_log_context", default=None)

Hook = Callable[[dict[str, Any]], Awaitable[None] | None]
_RAW_LIMIT = 64 * 1024
_ERROR_LIMIT = 2000
# how long the on_shutdown hook, and then closing the connection, may each take: with NATS gone, a hook's
# requests would each wait out their own timeout and a stop would take as long as they add up to
_CLOSE_TIMEOUT = 3.0
# past the grace period and both closing steps, a stop that has not ended is stuck: the process exits anyway
_EXIT_MARGIN = 5.0
# how often a worker whose connection is down looks again (pulls would only wait out their deadlines)
_DISCONNECTED_POLL = 0.25


@dataclass
class JobContext:
    """What a handler knows about the job it runs, plus the worker's shared ``resources``."""

    job_id: str
    task: str
    attempt: int
    max_retries: int
    queue: str
    priority: str
    enqueued_at: datetime
    schedule_id: str | None
    resources: dict[str, Any]
    _beat: Callable[[], Awaitable[None]] = field(repr=False)

    async def heartbeat(self) -> None:
        """Tell the server the job is still running (the worker also does this on its own for long jobs)."""
        await self._beat()

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt > self.max_retries


# ---------------------------------------------------------------------------------------------------------
# Outcomes: every way a job can end, decided in one place and settled in one place.


class DeadOnArrival(Exception):
    """A delivery that cannot run at all (unreadable, unknown task, invalid payload, delivered too often)."""

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["ack", "retry", "dead", "interrupted"]
    delay: float = 0.0
    reason: DeadLetterReason | None = None
    error: str = ""
    where: str | None = None

    @property
    def label(self) -> str:
        return f"dead:{self.reason}" if self.kind == "dead" else self.kind


def decide(exc: BaseException | None, *, attempt: int, envelope: JobEnvelope | None) -> Outcome:
    """The single mapping from how a job ended to what happens to its message."""
    if exc is None:
        return Outcome("ack")
    if isinstance(exc, asyncio.CancelledError):
        # the worker is shutting down past its grace period: hand the job straight to another worker
        return Outcome("interrupted", error="interrupted by shutdown")
    error, where = describe_error(exc)
    if isinstance(exc, DeadOnArrival):
        return Outcome("dead", reason=exc.reason, error=str(exc), where=None)
    if isinstance(exc, PermanentFailure):
        return Outcome("dead", reason="permanent_failure", error=error, where=where)
    assert envelope is not None  # every failure after parsing has an envelope
    if attempt > envelope.max_retries:
        return Outcome("dead", reason="retries_exhausted", error=error, where=where)
    if isinstance(exc, Retry) and exc.delay is not None:
        return Outcome("retry", delay=exc.delay, error=error, where=where)
    return Outcome("retry", delay=envelope.backoff.delay(attempt), error=error, where=where)


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """Exception type and message plus the raising line; never locals or arguments (they may hold secrets)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
    return text[:_ERROR_LIMIT], where


@dataclass
class _Running:
    msg: Msg
    started: float
    last_beat: float
    high: bool


#: allocations of container objects between two young collections of a worker process (Python's default: 700)
YOUNG_COLLECTION_AFTER = 20_000


def tune_collector() -> None:
    """The garbage collector for a worker process. Sending one email allocates a few hundred short-lived containers
    (models, dicts, coroutines, futures): at the default threshold a young collection ran every few emails and
    collections took ~7 % of a campaign worker's CPU (1.1 s of 15 s in a 20,000 campaign). What is loaded by now
    (modules, compiled code) is moved out of the collector's reach, and a young collection waits for
    :data:`YOUNG_COLLECTION_AFTER` allocations; cyclic garbage is found as before, only in fewer, larger sweeps."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_AFTER, middle, old)


class Worker:
    """Runs the jobs of some queues until stopped (SIGTERM/SIGINT or ``stop()``), or, in burst mode, until
    they are empty."""

    def __init__(self, config: QueueConfig, queues: Iterable[str], *, registry: Registry | None = None,
                 concurrency: int = 10, burst: bool = False, on_startup: Hook | None = None,
                 on_shutdown: Hook | None = None, health_port: int | None = None,
                 health_host: str = "127.0.0.1", heartbeat_interval: float | None = None,
                 grace_period: float = 25.0, poll_interval: float = 0.1, handle_signals: bool = True,
                 reserve_high: int = 0, health_check: Callable[[], bool] | None = None,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.config = config
        self.queues = [check_queue(q) for q in dict.fromkeys(queues)]
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if grace_period < 0:
            raise ValueError("grace_period must not be negative")
        if not 0 < poll_interval <= 5:
            raise ValueError("poll_interval must be in (0, 5] seconds")
        if not 0 <= reserve_high < concurrency:
            raise ValueError(f"reserve_high must be in [0, concurrency={concurrency}), got {reserve_high}")
        self.registry = registry if registry is not None else default_registry
        self.concurrency = concurrency
        # slots only high-priority jobs may take: a transactional message finds one free at once even while
        # long campaign batches fill every other slot
        self.reserve_high = reserve_high
        self.burst = burst
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.health_port = health_port
        self.health_host = health_host
        self.heartbeat_interval = (heartbeat_interval if heartbeat_interval is not None
                                   else config.ack_wait / 3)
        if self.heartbeat_interval <= 0 or self.heartbeat_interval >= config.ack_wait:
            raise ValueError("heartbeat_interval must be positive and shorter than ack_wait")
        self.grace_period = grace_period
        self.poll_interval = poll_interval
        self.handle_signals = handle_signals
        # what else /healthz requires (e.g. the worker's child process running), and what to tell when it stops
        self.health_check = health_check
        self.on_stop = on_stop
        self.resources: dict[str, Any] = {}
        self.stats: Counter[str] = Counter()
        self._queue = Queue(config, registry=self.registry)
        self._pullers: dict[tuple[str, str], Puller] = {}
        self._inflight: dict[asyncio.Task[None], _Running] = {}
        self._rotation = itertools.cycle(range(len(self.queues)))
        self._stopping = asyncio.Event()
        self._force = asyncio.Event()
        self._wake = asyncio.Event()
        self._fetch_task: asyncio.Task[None] | None = None
        self._health_server: asyncio.Server | None = None

    # ---- lifecycle
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._queue.connect()
        installed: list[signal.Signals] = []
        background: list[asyncio.Task[None]] = []
        started = False
        try:
            await self._queue.ensure_streams(self.queues)
            nc = self._queue.nc
            self._pullers = {(q, p): Puller(nc, stream=self.config.stream, consumer=consumer_name(q, p))
                             for q in self.queues for p in PRIORITIES}
            await _call_hook(self.on_startup, self.resources)
            started = True
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
            if self.health_port is not None:
                self._health_server = await asyncio.start_server(self._serve_health, self.health_host,
                                                                 self.health_port)
                self.health_port = self._health_server.sockets[0].getsockname()[1]
            background.append(asyncio.create_task(self._heartbeats()))
            log.info("worker started: queues=%s concurrency=%d reserve_high=%d burst=%s tasks=%s",
                     ",".join(self.queues), self.concurrency, self.reserve_high, self.burst,
                     ",".join(self.registry.names()))
            self._fetch_task = asyncio.create_task(self._fetch_loop())
            await self._fetch_task
        finally:
            self._stopping.set()
            await self._finish_inflight()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._health_server is not None:
                self._health_server.close()
                await self._health_server.wait_closed()
            for sig in installed:
                loop.remove_signal_handler(sig)
            try:
                if started:
                    await _bounded(_call_hook(self.on_shutdown, self.resources), "the on_shutdown hook")
            finally:
                await _bounded(self._close_connection(), "closing the NATS connection")
                log.info("worker stopped: %s", dict(self.stats) or "no jobs")

    async def _close_connection(self) -> None:
        for puller in self._pullers.values():
            await puller.close()
        await self._queue.close()

    def stop(self) -> None:
        """Stop fetching, let running jobs finish (up to the grace period), then return from ``run``."""
        first = not self._stopping.is_set()
        self._stopping.set()
        self._wake.set()
        if first and self.on_stop is not None:
            self.on_stop()

    @property
    def healthy(self) -> bool:
        nc = self._queue._nc
        return (nc is not None and nc.is_connected and self._fetch_task is not None
                and not self._fetch_task.done() and not self._stopping.is_set()
                and (self.health_check is None or self.health_check()))

    @property
    def running(self) -> int:
        return len(self._inflight)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.warning("%s again: not waiting for running jobs", sig.name)
            self._force.set()
            return
        log.info("%s: stopping; finishing %d running job(s)", sig.name, len(self._inflight))
        self.stop()
        # the last resort for a stop stuck where the loop cannot end it (a thread in a blocking call, a
        # client that ignores cancellation): past every bound below, the process ends anyway
        limit = self.grace_period + 2 * _CLOSE_TIMEOUT + _EXIT_MARGIN
        watchdog = threading.Timer(limit, _exit_stuck, args=(limit,))
        watchdog.daemon = True
        watchdog.start()

    async def _finish_inflight(self) -> None:
        pending = set(self._inflight)
        if not pending:
            return
        log.info("waiting up to %.0fs for %d running job(s)", self.grace_period, len(pending))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_period
        while pending and not self._force.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            forced = asyncio.create_task(self._force.wait())
            await asyncio.wait({*pending, forced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            pending = {task for task in pending if not task.done()}
        if pending:
            log.warning("%d job(s) still running; returning them to the queue", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ---- fetching
    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                self._wake.clear()
                if self.concurrency - len(self._inflight) <= 0 and not self._stopping.is_set():
                    await self._wake.wait()
                continue
            if not self._queue.is_connected:
                # a pull now only waits out its deadline (seconds per consumer): wait for the reconnect instead
                await self._wait_stopping(_DISCONNECTED_POLL)
                continue
            step = asyncio.create_task(self._fetch(free))
            stopped = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                if not step.done():
                    # a stop ends the pulls under way at once; what they already took is started and finished
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
            if step.cancelled():
                return
            try:
                msgs = step.result()
            except (PullError, QueueError, nats.errors.Error, TimeoutError) as exc:
                log.warning("fetch failed: %s; retrying", exc or type(exc).__name__)
                await self._wait_stopping(1.0)
                continue
            if msgs is None:
                log.info("burst: queues are empty")
                return
            for msg in msgs:
                self._start(msg)

    async def _fetch(self, free: int) -> list[Msg] | None:
        """One round of pulls for ``free`` slots; None when a burst worker has nothing left to do."""
        msgs = await self._take(free)
        if msgs:
            return msgs
        if self.burst and not self._inflight and await self._drained():
            return None
        await self._idle_wait(free)  # starts what it takes itself
        return []

    async def _wait_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _take(self, free: int) -> list[Msg]:
        """Fill free slots from high, then normal, then low: a level returning fewer than asked is empty.
        Normal and low jobs never take the ``reserve_high`` slots."""
        got: list[Msg] = []
        order = self._queue_order()
        try:
            for priority in PRIORITIES:
                for queue in order:
                    want = free - len(got)
                    if priority != "high":
                        want = min(want, self._free_for_others() - sum(1 for m in got if not _is_high(m)))
                    if want <= 0:
                        break
                    got.extend(await self._pullers[(queue, priority)].pull(want))
        except BaseException:
            for msg in got:
                self._start(msg)  # delivered to us already: run them rather than strand them until ack_wait
            raise
        return got

    async def _idle_wait(self, free: int) -> None:
        """Nothing anywhere: long-poll the high consumers briefly, so high work starts at once when it comes
        and normal/low work waits at most one poll interval. A job that arrives starts as soon as its own
        pull returns, not when the other queues' polls have run out (up to a poll interval later)."""

        async def poll(queue: str) -> None:
            for msg in await self._pullers[(queue, "high")].pull(1, wait=self.poll_interval):
                self._start(msg)

        order = self._queue_order()[:free]
        results = await asyncio.gather(*(poll(queue) for queue in order), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # what arrived before the failure is running already

    def _free_for_others(self) -> int:
        others = sum(1 for running in self._inflight.values() if not running.high)
        return self.concurrency - self.reserve_high - others

    def _queue_order(self) -> list[str]:
        # rotate the starting queue so one busy queue cannot starve the others at the same priority
        start = next(self._rotation)
        return self.queues[start:] + self.queues[:start]

    async def _drained(self) -> bool:
        js = self._queue.js
        for queue in self.queues:
            for priority in PRIORITIES:
                info = await js.consumer_info(self.config.stream, consumer_name(queue, priority))
                if (info.num_pending or 0) + (info.num_ack_pending or 0) > 0:
                    return False
        return True

    # ---- running
    def _start(self, msg: Msg) -> None:
        now = asyncio.get_running_loop().time()
        task = asyncio.create_task(self._run(msg))
        self._inflight[task] = _Running(msg=msg, started=now, last_beat=now, high=_is_high(msg))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job runner crashed", exc_info=task.exception())

    async def _run(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        meta = msg.metadata
        attempt = meta.num_delivered
        queue, priority = _queue_and_priority(msg.subject)
        envelope: JobEnvelope | None = None
        exc: BaseException | None = None
        try:
            envelope = self._envelope(msg)
            job_log_context.set(_log_fields(envelope, queue=queue, priority=priority, attempt=attempt))
            definition = self._definition(envelope, attempt)
            job = _parse(definition, envelope)
            ctx = JobContext(job_id=envelope.job_id, task=envelope.task, attempt=attempt,
                             max_retries=envelope.max_retries, queue=queue, priority=priority,
                             enqueued_at=envelope.enqueued_at, schedule_id=envelope.schedule_id,
                             resources=self.resources, _beat=lambda: self._beat(msg))
            if definition.is_async:
                await definition.handler(job, ctx)
            else:
                await asyncio.to_thread(definition.handler, job, ctx)
        except (Exception, asyncio.CancelledError) as caught:
            exc = caught
        outcome = decide(exc, attempt=attempt, envelope=envelope)
        await self._settle(msg, outcome, envelope=envelope, attempt=attempt, queue=queue)
        self.stats[outcome.label] += 1
        job_id = envelope.job_id if envelope else f"seq:{meta.sequence.stream}"
        task_name = envelope.task if envelope else "?"
        duration_ms = (loop.time() - started) * 1000
        extra = {"job_id": job_id, "task": task_name, "attempt": attempt, "outcome": outcome.label,
                 "duration_ms": round(duration_ms, 1), "queue": queue}
        if outcome.kind == "ack":
            log.info("job %s task=%s attempt=%d outcome=ok duration_ms=%.1f", job_id, task_name, attempt,
                     duration_ms, extra=extra)
        else:
            level = logging.ERROR if outcome.kind == "dead" else logging.WARNING
            retry = f" retry_in={outcome.delay:.2f}s" if outcome.kind == "retry" else ""
            log.log(level, "job %s task=%s attempt=%d outcome=%s%s duration_ms=%.1f error=%s", job_id,
                    task_name, attempt, outcome.label, retry, duration_ms, outcome.error, extra=extra)

    def _envelope(self, msg: Msg) -> JobEnvelope:
        try:
            envelope = JobEnvelope.model_validate_json(msg.data)
        except ValidationError as exc:
            problems = describe_validation(exc)
            raise DeadOnArrival("invalid_payload", f"invalid job envelope: {problems}") from None
        headers = msg.headers or {}
        if envelope.schedule_id and HDR_SCHEDULER in headers:
            # each firing of a recurring schedule is its own job; the server names the firing by its next slot
            slot = headers.get(HDR_SCHEDULE_NEXT)
            suffix = slot if slot and slot != "purge" else str(msg.metadata.sequence.stream)
            envelope = envelope.model_copy(update={"job_id": f"{envelope.schedule_id}@{suffix}",
                                                   "enqueued_at": msg.metadata.timestamp})
        return envelope

    def _definition(self, envelope: JobEnvelope, attempt: int) -> TaskDef:
        definition = self.registry.get(envelope.task)
        if definition is None:
            raise DeadOnArrival("unknown_task",
                                f"no task named {envelope.task!r} is registered in this worker")
        if attempt > envelope.max_retries + 1:
            raise DeadOnArrival("delivery_limit", f"delivered {attempt} times without finishing "
                                "(a worker crashed or the job outlived ack_wait without heartbeats)")
        return definition

    async def _settle(self, msg: Msg, outcome: Outcome, *, envelope: JobEnvelope | None, attempt: int,
                      queue: str) -> None:
        try:
            if outcome.kind == "ack":
                await msg.ack()
            elif outcome.kind == "retry":
                await msg.nak(delay=outcome.delay)
            elif outcome.kind == "interrupted":
                await msg.nak()
            else:
                try:
                    await self._dead_letter(msg, outcome, envelope=envelope, attempt=attempt, queue=queue)
                except QueueError as exc:
                    # keep the job rather than lose it: it comes back and tries the dead-letter stream again
                    log.error("cannot dead-letter stream seq %d: %s", msg.metadata.sequence.stream, exc)
                    await msg.nak(delay=5.0)
                    return
                await msg.term()
        except (nats.errors.Error, TimeoutError) as exc:
            # the server redelivers after ack_wait; nothing else to do from here
            log.warning("cannot settle stream seq %d (%s): %s", msg.metadata.sequence.stream, outcome.label,
                        exc or type(exc).__name__)

    async def _dead_letter(self, msg: Msg, outcome: Outcome, *, envelope: JobEnvelope | None, attempt: int,
                           queue: str) -> None:
        stream_seq = msg.metadata.sequence.stream
        assert outcome.reason is not None
        record = DeadLetter(
            reason=outcome.reason, error=outcome.error, where=outcome.where, attempts=attempt, queue=queue,
            subject=msg.subject, stream_seq=stream_seq,
            job_id=envelope.job_id if envelope else None, task=envelope.task if envelope else None,
            envelope=envelope.model_dump(mode="json") if envelope else None,
            raw=None if envelope else msg.data[:_RAW_LIMIT].decode(errors="replace"),
            failed_at=utcnow(),
        )
        headers = {
            # a crash between this publish and term() redelivers the job; the id keeps the dead letter single
            HDR_MSG_ID: f"dead:{self.config.stream}:{stream_seq}",
            HDR_DEAD_REASON: outcome.reason,
        }
        if envelope:
            headers[HDR_JOB_ID] = envelope.job_id
        await self._queue._publish(dlq_subject(queue), record.model_dump_json().encode(), headers)

    # ---- keeping long jobs alive
    async def _beat(self, msg: Msg) -> None:
        for running in self._inflight.values():
            if running.msg is msg:
                running.last_beat = asyncio.get_running_loop().time()
        await msg.in_progress()

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_interval / 2)
            now = loop.time()
            for running in list(self._inflight.values()):
                if now - running.last_beat >= self.heartbeat_interval:
                    running.last_beat = now
                    try:
                        await running.msg.in_progress()
                    except nats.errors.Error as exc:
                        log.warning("heartbeat failed: %s", exc)

    # ---- health
    async def _serve_health(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path.split("?")[0] != "/healthz":
                status, body = "404 Not Found", b"not found\n"
            elif self.healthy:
                status, body = "200 OK", b"ok\n"
            else:
                status, body = "503 Service Unavailable", b"unavailable\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _bounded(step: Awaitable[None], what: str) -> None:
    """Run one closing step for at most ``_CLOSE_TIMEOUT``; a failure is logged, never keeps the worker up."""
    try:
        await asyncio.wait_for(step, timeout=_CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("%s took longer than %.0fs; going on without it", what, _CLOSE_TIMEOUT)
    except Exception as exc:
        log.warning("%s failed: %s", what, describe_error(exc)[0])


def _exit_stuck(limit: float) -> None:
    log.error("worker stopped: still not done %.0fs after the stop signal; exiting now", limit)
    os._exit(1)


def _parse(definition: TaskDef, envelope: JobEnvelope) -> Any:
    try:
        return definition.parse(envelope.payload)
    except ValidationError as exc:
        problems = describe_validation(exc)
        raise DeadOnArrival("invalid_payload",
                            f"invalid payload for task {definition.name!r}: {problems}") from None


def _log_fields(envelope: JobEnvelope, *, queue: str, priority: str, attempt: int) -> dict[str, object]:
    fields: dict[str, object] = {"job_id": envelope.job_id, "task": envelope.task, "queue": queue,
                                 "priority": priority, "attempt": attempt}
    for key, value in envelope.payload.items():
        if key.endswith("_id") and isinstance(value, str | int) and key not in fields:
            fields[key] = value
    return fields


def _is_high(msg: Msg) -> bool:
    return _queue_and_priority(msg.subject)[1] == "high"


def _queue_and_priority(subject: str) -> tuple[str, str]:
    parts = subject.split(".")
    return (parts[1], parts[2]) if len(parts) == 3 else (subject, "normal")


async def _call_hook(hook: Hook | None, resources: dict[str, Any]) -> None:
    if hook is None:
        return
    result = hook(resources)
    if inspect.isawaitable(result):
        await result
