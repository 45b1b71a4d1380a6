"""The tasks ``jetmail worker`` runs: importing this module registers them.

A worker calls ``startup(resources)`` and ``shutdown(resources)`` from here when they exist; that is where
clients shared by all jobs of the process are created and closed.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from jetmail.queue import JobContext, task

log = logging.getLogger("jetmail.tasks")


class DemoHello(BaseModel):
    name: str


class DemoFail(BaseModel):
    reason: str = "demo_fail always fails"


@task("demo_hello", model=DemoHello)
async def demo_hello(job: DemoHello, ctx: JobContext) -> None:
    """Log a greeting: the smallest job that shows the pipeline end to end."""
    log.info("hello, %s (job %s, attempt %d)", job.name, ctx.job_id, ctx.attempt)


@task("demo_fail", model=DemoFail)
async def demo_fail(job: DemoFail, ctx: JobContext) -> None:
    """Fail every attempt, so the job ends in the dead-letter stream after its retries."""
    raise RuntimeError(job.reason)
