"""Helpers for the job-layer tests: reading the task log, polling for conditions, background workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jetmail.devstack.stack import wait_until_async
from jetmail.queue import QueueConfig, Worker


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_log(path) if r["event"] == "done"]


@contextlib.asynccontextmanager
async def running_worker(config: QueueConfig, queues: list[str], **options: Any) -> AsyncIterator[Worker]:
    """A worker running in the background of the test's loop, stopped (gracefully) on exit."""
    options.setdefault("handle_signals", False)
    worker = Worker(config, queues, **options)
    task = asyncio.create_task(worker.run())
    await wait_until_async(lambda: worker.healthy or task.done(), what="worker start")
    if task.done():
        await task  # surface the start-up error
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)
