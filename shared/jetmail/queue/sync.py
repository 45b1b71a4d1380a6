"""A blocking client for synchronous callers: Lambda handlers, sync FastAPI routes, the CLI.

A NATS connection belongs to the event loop that opened it. Lambda (through Mangum) and web servers run
code on loops of their own, sometimes a new one per invocation, so a connection cached from one call breaks
on the next. SyncClient therefore owns one private loop in a daemon thread and one connection on it; every
call is handed to that loop with ``run_coroutine_threadsafe`` and waited for. That works from any thread,
with or without a running loop of its own, and a warm Lambda reuses the connection across invocations.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from .client import Queue
from .config import QueueConfig
from .errors import QueueError
from .models import Backoff, DeadLetter, JobRef, ScheduleInfo
from .registry import Registry

T = TypeVar("T")


class SyncClient:
    """``with SyncClient(config) as q: q.enqueue(...)`` for a private client closed on exit, or
    ``SyncClient.shared(config)`` for the process-wide one (connects on first use, never closed by ``with``).
    Thread-safe: calls from many threads share the one connection.
    """

    _shared: ClassVar[dict[QueueConfig, SyncClient]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: QueueConfig, *, registry: Registry | None = None,
                 timeout: float | None = None) -> None:
        self.config = config
        self.timeout = timeout if timeout is not None else config.connect_timeout + config.request_timeout + 5
        self._queue = Queue(config, registry=registry)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._is_shared = False

    @classmethod
    def shared(cls, config: QueueConfig, *, registry: Registry | None = None) -> SyncClient:
        """The process-wide client for ``config``; a warm Lambda keeps it and its connection."""
        with cls._shared_lock:
            client = cls._shared.get(config)
            if client is None:
                client = cls(config, registry=registry)
                client._is_shared = True
                cls._shared[config] = client
            return client

    # ---- lifecycle
    def connect(self) -> SyncClient:
        with self._lock:
            if self._thread is not None and self._pid != os.getpid():
                # a forked child inherits a dead loop thread; start over rather than wait on it forever
                self._loop, self._thread = None, None
            if self._thread is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=_serve_loop, args=(loop, ready), name="jetmail-queue-loop",
                                          daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                try:
                    self._submit(self._queue.connect)
                except BaseException:
                    self._stop_loop()
                    raise
        return self

    def close(self) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._loop, self._thread = None, None
                return
            try:
                self._submit(self._queue.close)
            finally:
                self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._is_shared:
            self.close()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop, self._thread = None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)

    def _submit(self, factory: Callable[[], Awaitable[T]]) -> T:
        loop = self._loop
        assert loop is not None
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncClient cannot be called from its own event loop; use Queue there")
        future = asyncio.run_coroutine_threadsafe(_invoke(factory), loop)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise QueueError(f"no answer from the job layer within {self.timeout:.0f}s") from None

    def _call(self, operation: Callable[[Queue], Awaitable[T]]) -> T:
        self.connect()
        queue = self._queue

        async def run() -> T:
            await queue.connect()  # no-op while connected; reopens a connection that was closed under us
            return await operation(queue)

        return self._submit(run)

    def run(self, operation: Callable[[Queue], Awaitable[T]]) -> T:
        """Run ``operation(queue)`` on the client's loop and wait: for callers that need the connected
        ``Queue`` itself (its ``js`` context), not just one of the methods below."""
        return self._call(operation)

    # ---- the Queue API, blocking
    def ensure_streams(self, queues: Iterable[str] = ()) -> None:
        names = list(queues)
        self._call(lambda q: q.ensure_streams(names))

    def enqueue(self, task: str, *, queue: str, priority: str = "normal", job_id: str | None = None,
                max_retries: int = 3, backoff: Backoff | None = None,
                payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> JobRef:
        return self._call(lambda q: q.enqueue(task, queue=queue, priority=priority, job_id=job_id,
                                              max_retries=max_retries, backoff=backoff, payload=payload,
                                              **kwargs))

    def enqueue_many(self, task: str, payloads: Iterable[BaseModel | Mapping[str, Any]], *, queue: str,
                     priority: str = "normal", job_ids: Iterable[str] | None = None,
                     max_retries: int = 3, backoff: Backoff | None = None) -> list[JobRef]:
        items = list(payloads)
        ids = list(job_ids) if job_ids is not None else None
        return self._call(lambda q: q.enqueue_many(task, items, queue=queue, priority=priority, job_ids=ids,
                                                   max_retries=max_retries, backoff=backoff))

    def enqueue_at(self, when: Any, task: str, *, queue: str, priority: str = "normal",
                   job_id: str | None = None, max_retries: int = 3, backoff: Backoff | None = None,
                   payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> JobRef:
        return self._call(lambda q: q.enqueue_at(when, task, queue=queue, priority=priority, job_id=job_id,
                                                 max_retries=max_retries, backoff=backoff, payload=payload,
                                                 **kwargs))

    def enqueue_in(self, delay: timedelta | float, task: str, *, queue: str, priority: str = "normal",
                   job_id: str | None = None, max_retries: int = 3, backoff: Backoff | None = None,
                   payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> JobRef:
        return self._call(lambda q: q.enqueue_in(delay, task, queue=queue, priority=priority, job_id=job_id,
                                                 max_retries=max_retries, backoff=backoff, payload=payload,
                                                 **kwargs))

    def cancel(self, job_id: str) -> bool:
        return self._call(lambda q: q.cancel(job_id))

    def schedule(self, task: str, *, queue: str, schedule_id: str, cron: str | None = None,
                 every: float | timedelta | str | None = None, timezone: str | None = None,
                 priority: str = "normal", max_retries: int = 3, backoff: Backoff | None = None,
                 payload: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> ScheduleInfo:
        return self._call(lambda q: q.schedule(task, queue=queue, schedule_id=schedule_id, cron=cron,
                                               every=every, timezone=timezone, priority=priority,
                                               max_retries=max_retries,
                                               backoff=backoff, payload=payload, **kwargs))

    def list_schedules(self) -> list[ScheduleInfo]:
        return self._call(lambda q: q.list_schedules())

    def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        return self._call(lambda q: q.get_schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        return self._call(lambda q: q.pause_schedule(schedule_id))

    def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        return self._call(lambda q: q.resume_schedule(schedule_id))

    def cancel_schedule(self, schedule_id: str) -> bool:
        return self._call(lambda q: q.cancel_schedule(schedule_id))

    def pending(self, queue: str) -> dict[str, int]:
        return self._call(lambda q: q.pending(queue))

    def dlq_list(self, limit: int = 50, *, queue: str | None = None) -> list[DeadLetter]:
        return self._call(lambda q: q.dlq_list(limit, queue=queue))

    def dlq_count(self, *, queue: str | None = None) -> int:
        return self._call(lambda q: q.dlq_count(queue=queue))

    def dlq_show(self, seq: int) -> DeadLetter:
        return self._call(lambda q: q.dlq_show(seq))

    def dlq_replay(self, seq: int) -> JobRef:
        return self._call(lambda q: q.dlq_replay(seq))

    def dlq_replay_all(self, *, queue: str | None = None) -> list[JobRef]:
        return self._call(lambda q: q.dlq_replay_all(queue=queue))

    def dlq_purge(self, *, queue: str | None = None) -> int:
        return self._call(lambda q: q.dlq_purge(queue=queue))


def ensure_streams(config: QueueConfig, queues: Iterable[str] = ()) -> None:
    """Blocking and idempotent: create or update the streams, the schedules bucket and the consumers."""
    with SyncClient(config) as client:
        client.ensure_streams(queues)


def get_sync_client(config: QueueConfig) -> SyncClient:
    """The process-wide ``SyncClient`` for ``config`` (what a Lambda module keeps at module scope)."""
    return SyncClient.shared(config)


def _serve_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _invoke(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


@atexit.register
def _close_shared() -> None:
    # flush buffered publishes of shared clients; their threads are daemons and would otherwise just vanish
    with SyncClient._shared_lock:
        clients = list(SyncClient._shared.values())
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: S110 - the interpreter is exiting; nothing useful to do with the error
            pass
