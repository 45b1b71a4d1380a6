"""The async producer side of the job layer: enqueue, delay, schedule, cancel, and dead-letter operations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from .config import QueueConfig
from .connection import connect_nats
from .errors import JobValidationError, NotFoundError, QueueError
from .models import Backoff, DeadLetter, JobEnvelope, JobRef, ScheduleInfo, utcnow
from .patterns import at_pattern, check_timezone, cron_pattern, delay_seconds, every_pattern
from .registry import Registry
from .registry import registry as default_registry
from .subjects import (
    DLQ_PREFIX,
    HDR_JOB_ID,
    HDR_MSG_ID,
    HDR_SCHEDULE,
    HDR_SCHEDULE_ID,
    HDR_SCHEDULE_TARGET,
    HDR_SCHEDULE_TZ,
    JOB_PREFIX,
    JS_API,
    PRIORITIES,
    SCHEDULE_PREFIX,
    check_job_id,
    check_priority,
    check_queue,
    check_schedule_id,
    check_task_name,
    consumer_name,
    delayed_subject,
    dlq_subject,
    job_subject,
    recurring_subject,
)

log = logging.getLogger("jetmail.queue")

_STREAM_NAME_IN_USE = 10058
_SCHEDULE_PATTERN_INVALID = 10189
_SCHEDULE_TARGET_INVALID = 10190
# "no suitable peers for placement": a cluster with a node (re)starting cannot place a stream's replicas yet
_NO_SUITABLE_PEERS = 10005
#: how long making a stream waits for a cluster to be able to place its replicas (a node restarting)
PLACEMENT_PATIENCE_S = 30.0

T = TypeVar("T")


async def placed(make: Callable[[], Awaitable[T]], *, patience: float = PLACEMENT_PATIENCE_S) -> T:
    """``make()``, a stream's creation or update, tried again while the cluster cannot place the stream's replicas
    (a node restarting, or just started and not yet seen by the others), for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    delay = 0.25
    while True:
        try:
            return await make()
        except nats.js.errors.APIError as exc:
            if exc.err_code != _NO_SUITABLE_PEERS or time.monotonic() + delay > deadline:
                raise
            log.info("cannot place a stream's replicas yet (%s); trying again in %.2fs", exc.description, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


class Queue:
    """A connection to the job streams for producers and operators.

    ``async with Queue(config) as q: await q.enqueue("task", queue="email_transactional", to=...)``
    """

    def __init__(self, config: QueueConfig, *, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else default_registry
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None

    # ---- lifecycle
    async def connect(self) -> Queue:
        if self._nc is None or self._nc.is_closed:
            nc = await connect_nats(self.config)
            if self._nc is not None and not self._nc.is_closed:
                await nc.close()  # another caller on this loop connected while we waited; keep theirs
                return self
            self._nc = nc
            self._js = nc.jetstream(timeout=self.config.request_timeout)
            self._kv = None
        return self

    async def close(self) -> None:
        nc, self._nc, self._js, self._kv = self._nc, None, None, None
        if nc is None or nc.is_closed:
            return
        try:
            # acks and publishes are buffered; make sure they reach the server before the socket goes
            if nc.is_connected:
                await nc.flush(timeout=max(1, round(self.config.request_timeout)))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("nats: flush before close failed: %s", exc or type(exc).__name__)
        finally:
            try:
                # without a server nats-py's close writes what it buffered to the dead socket and raises
                # ConnectionResetError; the connection is closed for our purposes either way
                await asyncio.wait_for(nc.close(), timeout=max(1.0, self.config.request_timeout))
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                log.warning("nats: close failed: %s", exc or type(exc).__name__)

    async def __aenter__(self) -> Queue:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        """Connected right now (False while nats-py reconnects, and before connect or after close)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def nc(self) -> NATS:
        if self._nc is None or self._nc.is_closed:
            raise QueueError("not connected: call connect() or use `async with Queue(...)`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        self.nc  # noqa: B018 - raises when not connected
        assert self._js is not None
        return self._js

    # ---- streams
    async def ensure_streams(self, queues: Iterable[str] = ()) -> None:
        """Create or update the job stream, the dead-letter stream, the schedules bucket and the consumers."""
        cfg = self.config
        await self._ensure_stream(api.StreamConfig(
            name=cfg.stream,
            description="jetmail jobs (work queue) and their message schedules",
            subjects=[f"{JOB_PREFIX}.>", f"{SCHEDULE_PREFIX}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window,
            allow_msg_schedules=True,
        ))
        await self._ensure_stream(api.StreamConfig(
            name=cfg.dlq_stream,
            description="jetmail jobs that failed for good",
            subjects=[f"{DLQ_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window,
        ))
        try:
            self._kv = await self.js.key_value(cfg.schedules_bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await placed(lambda: self.js.create_key_value(
                bucket=cfg.schedules_bucket, description="jetmail recurring schedules", history=1,
                replicas=cfg.replicas, storage=api.StorageType.FILE))
        for queue in dict.fromkeys(queues):
            await self.ensure_consumers(queue)

    async def ensure_consumers(self, queue: str) -> None:
        check_queue(queue)
        for priority in PRIORITIES:
            name = consumer_name(queue, priority)
            config = api.ConsumerConfig(
                name=name,
                durable_name=name,
                filter_subject=job_subject(queue, priority),
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=self.config.ack_wait,
                # the layer counts attempts itself and dead-letters; a server limit would strand messages
                max_deliver=-1,
                # jobs waiting out a retry delay count as pending acks; a limit would stall the queue
                max_ack_pending=-1,
            )
            try:
                # CREATE without an action creates or updates, so this is idempotent
                await self.js.add_consumer(self.config.stream, config)
            except nats.js.errors.APIError as exc:
                raise QueueError(f"cannot create consumer {name}: {exc.description}") from None

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            await placed(lambda: self.js.add_stream(config))
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise QueueError(f"cannot create stream {config.name}: {exc.description}") from None
            try:
                await placed(lambda: self.js.update_stream(config))
            except nats.js.errors.APIError as exc2:
                raise QueueError(f"cannot update stream {config.name}: {exc2.description}") from None

    # ---- enqueue
    async def enqueue(self, task: str, *, queue: str, priority: str = "normal",
                      job_id: str | None = None, max_retries: int = 3, backoff: Backoff | None = None,
                      payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> JobRef:
        """Publish one job. The payload is ``payload=`` or the keyword arguments; when the task is registered
        in this process it is validated against the task's model before anything is published."""
        envelope = self.envelope(task, queue=queue, priority=priority, job_id=job_id, max_retries=max_retries,
                                 backoff=backoff, payload=payload, kwargs=kwargs)
        ack = await self._publish(job_subject(envelope.queue, envelope.priority), envelope,
                                  {HDR_MSG_ID: envelope.job_id})
        return JobRef(job_id=envelope.job_id, duplicate=bool(ack.duplicate), seq=ack.seq)

    async def enqueue_many(self, task: str, payloads: Iterable[BaseModel | Mapping[str, Any]], *, queue: str,
                           priority: str = "normal", job_ids: Iterable[str] | None = None,
                           max_retries: int = 3, backoff: Backoff | None = None) -> list[JobRef]:
        """Publish many jobs of one task without waiting for each acknowledgement in turn.

        With ``job_ids`` (one per payload) a failed call can be repeated as is: the stream de-duplicates.
        """
        items = list(payloads)
        ids: list[str | None] = list(job_ids) if job_ids is not None else [None] * len(items)
        if len(ids) != len(items):
            raise ValueError(f"got {len(items)} payloads but {len(ids)} job ids")
        envelopes = [self.envelope(task, queue=queue, priority=priority, job_id=job_id,
                                   max_retries=max_retries, backoff=backoff, payload=item, kwargs={})
                     for item, job_id in zip(items, ids, strict=True)]
        if not envelopes:
            return []
        subject = job_subject(queue, priority)
        js = self.js
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for envelope in envelopes:
                futures.append(await js.publish_async(subject, envelope.model_dump_json().encode(),
                                                      headers={HDR_MSG_ID: envelope.job_id}))
        except nats.js.errors.TooManyStalledMsgsError:
            raise QueueError("publishing stalled: the server is not acknowledging") from None
        # one event for the whole batch (cheaper than a callback per future); a publish_async future has no
        # deadline of its own, so bound the wait to keep a lost ack from hanging the caller
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(js.publish_async_completed(), timeout=self.config.request_timeout)
        refs: list[JobRef] = []
        failures: list[BaseException] = []
        for envelope, future in zip(envelopes, futures, strict=True):
            if not future.done():
                future.cancel()
                failures.append(TimeoutError("no acknowledgement"))
                continue
            exc = future.exception()
            if exc is not None:
                failures.append(exc)
                continue
            ack = future.result()
            refs.append(JobRef(job_id=envelope.job_id, duplicate=bool(ack.duplicate), seq=ack.seq))
        if failures:
            first = failures[0]
            hint = ("repeating the call is safe: job ids de-duplicate" if job_ids is not None
                    else "pass job_ids to make a repeat safe")
            raise QueueError(f"{len(failures)} of {len(envelopes)} jobs were not enqueued "
                             f"({_describe_publish_error(first, subject)}); {hint}")
        return refs

    async def enqueue_at(self, when: Any, task: str, *, queue: str, priority: str = "normal",
                         job_id: str | None = None, max_retries: int = 3, backoff: Backoff | None = None,
                         payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> JobRef:
        """Run the job at ``when`` (an aware datetime); the server fires it, no scheduler process is involved.

        The job id de-duplicates the delayed publish too: enqueueing it again inside the duplicate window is a
        no-op, even after ``cancel``.
        """
        pattern = at_pattern(when)
        envelope = self.envelope(task, queue=queue, priority=priority, job_id=job_id, max_retries=max_retries,
                                 backoff=backoff, payload=payload, kwargs=kwargs)
        headers = {
            HDR_MSG_ID: envelope.job_id,
            HDR_SCHEDULE: pattern,
            HDR_SCHEDULE_TARGET: job_subject(envelope.queue, envelope.priority),
            HDR_JOB_ID: envelope.job_id,
        }
        ack = await self._publish(delayed_subject(envelope.job_id), envelope, headers)
        return JobRef(job_id=envelope.job_id, duplicate=bool(ack.duplicate), seq=ack.seq)

    async def enqueue_in(self, delay: timedelta | float, task: str, *, queue: str,
                         priority: str = "normal", job_id: str | None = None, max_retries: int = 3,
                         backoff: Backoff | None = None,
                         payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> JobRef:
        """Run the job after ``delay`` (seconds or a timedelta)."""
        when = utcnow() + timedelta(seconds=delay_seconds(delay))
        return await self.enqueue_at(when, task, queue=queue, priority=priority, job_id=job_id,
                                     max_retries=max_retries, backoff=backoff, payload=payload, **kwargs)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a delayed job that has not fired yet; False when there was nothing to cancel."""
        check_job_id(job_id)
        return await self._purge(self.config.stream, delayed_subject(job_id)) > 0

    def envelope(self, task: str, *, queue: str, priority: str = "normal", job_id: str | None = None,
                 max_retries: int = 3, backoff: Backoff | None = None,
                 payload: BaseModel | Mapping[str, Any] | None = None,
                 kwargs: Mapping[str, Any] | None = None, schedule_id: str | None = None) -> JobEnvelope:
        """Build and validate a job envelope without publishing it."""
        check_task_name(task)
        check_queue(queue)
        checked_priority = check_priority(priority)
        if job_id is not None:
            check_job_id(job_id)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            backoff = Backoff.model_validate(backoff)
        data = self._payload(task, payload, kwargs or {})
        return JobEnvelope(job_id=job_id or uuid.uuid4().hex, task=task, queue=queue,
                           priority=checked_priority, payload=data, max_retries=max_retries,
                           backoff=backoff or Backoff(), enqueued_at=utcnow(), schedule_id=schedule_id)

    def _payload(self, task: str, payload: BaseModel | Mapping[str, Any] | None,
                 kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if payload is not None and kwargs:
            raise TypeError("pass the payload either as keyword arguments or as payload=, not both")
        data: BaseModel | Mapping[str, Any] = payload if payload is not None else kwargs
        if not isinstance(data, BaseModel | Mapping):
            raise TypeError(f"payload must be a pydantic model or a mapping, got {type(data).__name__}")
        definition = self.registry.get(task)
        if definition is not None:
            return definition.normalise(data)
        if isinstance(data, BaseModel):
            return data.model_dump(mode="json")
        try:
            jsonable = to_jsonable_python(dict(data))
        except PydanticSerializationError as exc:
            raise JobValidationError(f"payload for task {task!r} is not JSON-serialisable: {exc}") from None
        return dict(jsonable)

    async def _publish(self, subject: str, envelope: JobEnvelope | bytes,
                       headers: Mapping[str, str]) -> api.PubAck:
        body = envelope if isinstance(envelope, bytes) else envelope.model_dump_json().encode()
        try:
            # nats-py adds to the headers dict it is given; hand it a copy
            return await self.js.publish(subject, body, headers=dict(headers))
        except nats.js.errors.APIError as exc:
            if exc.err_code in (_SCHEDULE_PATTERN_INVALID, _SCHEDULE_TARGET_INVALID):
                raise ValueError(f"the server rejected schedule {headers.get(HDR_SCHEDULE)!r} "
                                 f"for {headers.get(HDR_SCHEDULE_TARGET)}: {exc.description}") from None
            raise QueueError(_describe_publish_error(exc, subject)) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise QueueError(_describe_publish_error(exc, subject)) from None

    async def _purge(self, stream: str, subject: str | None = None) -> int:
        """Purge a stream (or one subject of it); return how many messages went (nats-py drops the count)."""
        request = json.dumps({"filter": subject} if subject else {}).encode()
        try:
            reply = await self.nc.request(f"{JS_API}.STREAM.PURGE.{stream}", request,
                                          timeout=self.config.request_timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            raise QueueError(f"cannot purge {subject or stream}: {exc or type(exc).__name__}") from None
        response = json.loads(reply.data)
        if "error" in response:
            raise QueueError(f"cannot purge {subject or stream}: {response['error'].get('description')}")
        return int(response.get("purged", 0))

    async def pending(self, queue: str) -> dict[str, int]:
        """Per priority: jobs waiting plus jobs delivered but not acknowledged (running or retrying)."""
        check_queue(queue)
        out: dict[str, int] = {}
        for priority in PRIORITIES:
            try:
                info = await self.js.consumer_info(self.config.stream, consumer_name(queue, priority))
            except nats.js.errors.NotFoundError:
                raise NotFoundError(f"queue {queue!r} has no consumers: "
                                    f"run `jetmail init --queue {queue}`") from None
            out[priority] = (info.num_pending or 0) + (info.num_ack_pending or 0)
        return out

    # ---- recurring schedules
    async def schedule(self, task: str, *, queue: str, schedule_id: str, cron: str | None = None,
                       every: float | timedelta | str | None = None, timezone: str | None = None,
                       priority: str = "normal", max_retries: int = 3, backoff: Backoff | None = None,
                       payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> ScheduleInfo:
        """Create or replace a recurring schedule fired by the server.

        ``cron`` takes 5 fields (minute first) or 6 (second first); ``every`` takes seconds, a timedelta or
        ``"5m"``. Declaring a schedule that an operator paused updates it but keeps it paused.
        """
        check_schedule_id(schedule_id)
        if (cron is None) == (every is None):
            raise ValueError("pass exactly one of cron= or every=")
        if timezone is not None and cron is None:
            raise ValueError("timezone applies to cron schedules only")
        zone = check_timezone(timezone) if timezone is not None else None
        cron_spec = cron_pattern(cron, timezone=zone) if cron is not None else None
        every_spec = every_pattern(every) if every is not None else None
        envelope = self.envelope(task, queue=queue, priority=priority, job_id=schedule_id,
                                 max_retries=max_retries, backoff=backoff, payload=payload, kwargs=kwargs,
                                 schedule_id=schedule_id)
        existing = await self._find_schedule(schedule_id)
        now = utcnow()
        info = ScheduleInfo(schedule_id=schedule_id, task=task, queue=queue, priority=envelope.priority,
                            cron=cron_spec, every=every_spec, timezone=zone, payload=envelope.payload,
                            max_retries=max_retries, backoff=envelope.backoff,
                            paused=existing.paused if existing else False,
                            created_at=existing.created_at if existing else now, updated_at=now)
        if not info.paused:
            await self._publish_schedule(info)
        await self._put_schedule(info)
        return info

    async def list_schedules(self) -> list[ScheduleInfo]:
        kv = await self._schedules()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        out = []
        for key in sorted(keys):
            info = await self._find_schedule(key)
            if info is not None:
                out.append(info)
        return out

    async def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        check_schedule_id(schedule_id)
        info = await self._find_schedule(schedule_id)
        if info is None:
            raise NotFoundError(f"no schedule {schedule_id!r}")
        return info

    async def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Stop firing (the server-side schedule is removed) but keep the spec so it can be resumed."""
        info = await self.get_schedule(schedule_id)
        await self._purge(self.config.stream, recurring_subject(schedule_id))
        info = info.model_copy(update={"paused": True, "updated_at": utcnow()})
        await self._put_schedule(info)
        return info

    async def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        info = await self.get_schedule(schedule_id)
        info = info.model_copy(update={"paused": False, "updated_at": utcnow()})
        await self._publish_schedule(info)
        await self._put_schedule(info)
        return info

    async def cancel_schedule(self, schedule_id: str) -> bool:
        """Stop firing and forget the schedule; False when it did not exist."""
        check_schedule_id(schedule_id)
        purged = await self._purge(self.config.stream, recurring_subject(schedule_id))
        existed = await self._find_schedule(schedule_id) is not None
        if existed:
            await (await self._schedules()).purge(schedule_id)
        return existed or purged > 0

    async def _publish_schedule(self, info: ScheduleInfo) -> None:
        template = JobEnvelope(job_id=info.schedule_id, task=info.task, queue=info.queue,
                               priority=info.priority, payload=info.payload, max_retries=info.max_retries,
                               backoff=info.backoff,
                               enqueued_at=utcnow(), schedule_id=info.schedule_id)
        headers = {
            HDR_SCHEDULE: info.pattern,
            HDR_SCHEDULE_TARGET: job_subject(info.queue, info.priority),
            HDR_SCHEDULE_ID: info.schedule_id,
        }
        if info.timezone:
            headers[HDR_SCHEDULE_TZ] = info.timezone
        # no Nats-Msg-Id: resuming republishes the same schedule and must not be de-duplicated away
        await self._publish(recurring_subject(info.schedule_id), template, headers)

    async def _schedules(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.config.schedules_bucket)
            except nats.js.errors.BucketNotFoundError:
                raise QueueError(f"schedules bucket {self.config.schedules_bucket} does not exist: "
                                 "run `jetmail init`") from None
        return self._kv

    async def _find_schedule(self, schedule_id: str) -> ScheduleInfo | None:
        kv = await self._schedules()
        try:
            entry = await kv.get(schedule_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        try:
            return ScheduleInfo.model_validate_json(entry.value)
        except ValidationError:
            log.warning("schedule %s: unreadable record in %s", schedule_id, self.config.schedules_bucket)
            return None

    async def _put_schedule(self, info: ScheduleInfo) -> None:
        kv = await self._schedules()
        await kv.put(info.schedule_id, info.model_dump_json().encode())

    # ---- dead letters
    async def dlq_list(self, limit: int = 50, *, queue: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        return [letter async for letter in self._dead_letters(queue=queue, limit=limit)]

    async def dlq_count(self, *, queue: str | None = None) -> int:
        subject = dlq_subject(check_queue(queue)) if queue else f"{DLQ_PREFIX}.>"
        try:
            info = await self.js.stream_info(self.config.dlq_stream, subjects_filter=subject)
        except nats.js.errors.NotFoundError:
            raise QueueError(f"stream {self.config.dlq_stream} does not exist: run `jetmail init`") from None
        return sum((info.state.subjects or {}).values())

    async def dlq_show(self, seq: int) -> DeadLetter:
        if seq < 1:
            raise NotFoundError(f"no dead letter with sequence {seq}")
        try:
            raw = await self.js.get_msg(self.config.dlq_stream, seq=seq)
        except nats.js.errors.NotFoundError:
            raise NotFoundError(f"no dead letter with sequence {seq}") from None
        return _dead_letter(raw)

    async def dlq_replay(self, seq: int) -> JobRef:
        """Put a dead job back on its original subject as a fresh message, then drop the dead letter."""
        return await self._replay(await self.dlq_show(seq))

    async def dlq_replay_all(self, *, queue: str | None = None) -> list[JobRef]:
        """Replay every dead letter that holds a job envelope; the others stay for inspection."""
        refs = []
        async for letter in self._dead_letters(queue=queue):
            if letter.envelope is not None:
                refs.append(await self._replay(letter))
        return refs

    async def dlq_purge(self, *, queue: str | None = None) -> int:
        subject = dlq_subject(check_queue(queue)) if queue else None
        return await self._purge(self.config.dlq_stream, subject)

    async def _replay(self, letter: DeadLetter) -> JobRef:
        assert letter.seq is not None
        if letter.envelope is None:
            raise QueueError(f"dead letter {letter.seq} ({letter.reason}) holds no valid job envelope, so it "
                             "cannot be replayed; inspect it with `jetmail dlq show` and purge it")
        envelope = JobEnvelope.model_validate(letter.envelope)
        subject = (letter.subject if letter.subject.startswith(f"{JOB_PREFIX}.")
                   else job_subject(envelope.queue, envelope.priority))
        # a fresh id: the original is still inside the duplicate window and would be dropped
        ack = await self._publish(subject, envelope, {HDR_MSG_ID: f"{envelope.job_id}:replay:{letter.seq}"})
        try:
            await self.js.delete_msg(self.config.dlq_stream, letter.seq)
        except nats.js.errors.NotFoundError:
            pass  # replayed concurrently by someone else; the dedup id above kept it to one copy
        return JobRef(job_id=envelope.job_id, duplicate=bool(ack.duplicate), seq=ack.seq)

    async def _dead_letters(self, *, queue: str | None = None,
                            limit: int | None = None) -> AsyncIterator[DeadLetter]:
        subject = dlq_subject(check_queue(queue)) if queue else f"{DLQ_PREFIX}.>"
        seq = 0
        count = 0
        while limit is None or count < limit:
            try:
                raw = await self.js.get_msg(self.config.dlq_stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return
            count += 1
            seq = (raw.seq or seq) + 1
            yield _dead_letter(raw)


def _dead_letter(raw: api.RawStreamMsg) -> DeadLetter:
    try:
        letter = DeadLetter.model_validate_json(raw.data or b"")
    except ValidationError:
        letter = DeadLetter(reason="invalid_payload", error="unreadable dead-letter record", attempts=0,
                            subject=raw.subject or "", stream_seq=0,
                            raw=(raw.data or b"")[:2000].decode(errors="replace"))
    return letter.model_copy(update={"seq": raw.seq})


def _describe_publish_error(exc: BaseException, subject: str) -> str:
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return f"no stream captures {subject}: run `jetmail init`"
    if isinstance(exc, nats.js.errors.APIError):
        return f"the server refused {subject}: {exc.description}"
    if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
        return f"timed out publishing to {subject}"
    return f"publishing to {subject} failed: {exc or type(exc).__name__}"
