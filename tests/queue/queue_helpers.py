"""Helpers for the job-layer tests: reading the task log, polling for conditions, background workers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from jetmail.queue import QueueConfig, Worker


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_log(path) if r["event"] == "done"]


async def wait_for(check: Callable[[], Any], *, timeout: float = 10.0,  # noqa: ASYNC109 - a poll deadline
                   what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail naming ``what`` at the end."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_for_sync(check: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


@contextlib.asynccontextmanager
async def running_worker(config: QueueConfig, queues: list[str], **options: Any) -> AsyncIterator[Worker]:
    """A worker running in the background of the test's loop, stopped (gracefully) on exit."""
    options.setdefault("handle_signals", False)
    worker = Worker(config, queues, **options)
    task = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.healthy or task.done(), what="worker start")
    if task.done():
        await task  # surface the start-up error
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)
