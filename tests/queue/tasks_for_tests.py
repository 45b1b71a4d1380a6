"""Tasks the job-layer tests run, in-process and in `jetmail worker --import tests.queue.tasks_for_tests`.

Each run appends JSON lines to the file named in its payload, which tests read across processes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import Any

from pydantic import BaseModel

from jetmail.queue import JobContext, PermanentFailure, Retry, task


class Record(BaseModel):
    log: str
    label: str = ""
    sleep: float = 0.0
    sleep_on_retry: bool = False
    fail_while: str | None = None
    fail_times: int = 0
    retry_delay: float | None = None
    permanent: bool = False


def write(path: str, event: str, ctx: JobContext, label: str, **extra: Any) -> None:
    line = {"event": event, "job_id": ctx.job_id, "attempt": ctx.attempt, "label": label, "pid": os.getpid(),
            "t": time.time(), "enqueued_at": ctx.enqueued_at.timestamp(), "queue": ctx.queue,
            "priority": ctx.priority, "schedule_id": ctx.schedule_id,
            "gc_threshold": gc.get_threshold(), "gc_frozen": gc.get_freeze_count(), **extra}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


@task("test_record", model=Record)
async def record(job: Record, ctx: JobContext) -> None:
    write(job.log, "start", ctx, job.label)
    if job.sleep and (ctx.attempt == 1 or job.sleep_on_retry):
        await asyncio.sleep(job.sleep)
    if job.permanent:
        raise PermanentFailure("told to fail for good")
    if job.fail_while and os.path.exists(job.fail_while):  # noqa: ASYNC240 - a tiny local stat
        raise RuntimeError("flag file present")
    if ctx.attempt <= job.fail_times:
        if job.retry_delay is not None:
            raise Retry(delay=job.retry_delay)
        raise RuntimeError(f"failing attempt {ctx.attempt}")
    write(job.log, "done", ctx, job.label)


@task("test_record_sync", model=Record)
def record_sync(job: Record, ctx: JobContext) -> None:
    write(job.log, "start", ctx, job.label)
    if job.sleep:
        time.sleep(job.sleep)
    write(job.log, "done", ctx, job.label)


@task("test_noop")
async def noop(job: dict[str, Any], ctx: JobContext) -> None:
    return None
