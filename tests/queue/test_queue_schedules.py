"""Delayed and recurring jobs, fired by the server's message schedules."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tasks_for_tests  # noqa: F401 - registers the test tasks in the default registry
from queue_helpers import done, running_worker

from jetmail.devstack.stack import wait_until_async
from jetmail.queue import NotFoundError, Queue, QueueConfig


async def test_delayed_job_fires_on_time(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        # GIVEN jobs due in one second, by delay and by date
        before = time.time()
        by_delay = await q.enqueue_in(1.0, "test_record", queue=qname, log=str(joblog), label="in")
        after = time.time()
        due_at = datetime.now(UTC) + timedelta(seconds=1.2)
        await q.enqueue_at(due_at, "test_record", queue=qname, priority="high", log=str(joblog), label="at")
        assert not by_delay.duplicate
        # WHEN they come due
        records = await wait_until_async(lambda: _at_least(done(joblog), 2), timeout=5, what="both delayed jobs")
        # THEN each ran within a second of its time, not before
        runs = {r["label"]: r for r in records}
        assert before + 1.0 - 0.05 <= runs["in"]["t"] <= after + 1.0 + 1.0
        assert runs["in"]["job_id"] == by_delay.job_id and runs["in"]["attempt"] == 1
        assert due_at.timestamp() - 0.05 <= runs["at"]["t"] <= due_at.timestamp() + 1.0


async def test_cancelled_delayed_job_never_runs(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        # GIVEN two delayed jobs, one with an id that is not a safe subject token
        await q.enqueue_in(0.8, "test_record", queue=qname, job_id="welcome/anna@example.com",
                           log=str(joblog), label="cancelled")
        await q.enqueue_in(1.0, "test_record", queue=qname, log=str(joblog), label="control")
        # WHEN the first is cancelled before it is due
        assert await q.cancel("welcome/anna@example.com") is True
        assert await q.cancel("welcome/anna@example.com") is False
        # THEN the later control job runs and the cancelled one never did
        await wait_until_async(lambda: done(joblog), timeout=5, what="the control job")
        assert [r["label"] for r in done(joblog)] == ["control"]
        # AND its id stays taken for the duplicate window, like any job id
        again = await q.enqueue_in(0.1, "test_record", queue=qname, job_id="welcome/anna@example.com",
                                   log=str(joblog))
        assert again.duplicate


async def test_cron_schedule_fires_every_second_until_cancelled(qconfig: QueueConfig, qname: str,
                                                                joblog: Path, unique: str) -> None:
    schedule_id = f"cron_{unique}"
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        # GIVEN a 6-field cron firing every second (with a time zone, which the server applies)
        info = await q.schedule("test_record", queue=qname, schedule_id=schedule_id, cron="* * * * * *",
                                timezone="Europe/Berlin", log=str(joblog), label="tick")
        assert info.pattern == "* * * * * *" and not info.paused
        assert schedule_id in [s.schedule_id for s in await q.list_schedules()]
        # WHEN it has fired a few times
        runs = await wait_until_async(lambda: _at_least(done(joblog), 2), timeout=5, what="two firings")
        # THEN every firing is its own job, named after the schedule
        ids = [r["job_id"] for r in runs]
        assert len(set(ids)) == len(ids) and all(i.startswith(f"{schedule_id}@") for i in ids)
        assert all(r["schedule_id"] == schedule_id for r in runs)
        # WHEN it is cancelled
        assert await q.cancel_schedule(schedule_id) is True
        cancelled_at = time.time()
        # THEN it is gone, and nothing fired after the cancel (checked once a later job has run)
        assert schedule_id not in [s.schedule_id for s in await q.list_schedules()]
        await q.enqueue_in(1.5, "test_record", queue=qname, log=str(joblog), label="marker")
        await wait_until_async(lambda: [r for r in done(joblog) if r["label"] == "marker"], timeout=5, what="marker")
        late = [r for r in done(joblog) if r["label"] == "tick" and r["enqueued_at"] > cancelled_at + 0.05]
        assert not late
        assert await q.cancel_schedule(schedule_id) is False


async def test_interval_schedule_pauses_and_resumes(qconfig: QueueConfig, qname: str, joblog: Path,
                                                    unique: str) -> None:
    schedule_id = f"every_{unique}"
    ticks = lambda: [r for r in done(joblog) if r["label"] == "tick"]  # noqa: E731
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        # GIVEN a schedule firing every second
        await q.schedule("test_record", queue=qname, schedule_id=schedule_id, every="1s", log=str(joblog),
                         label="tick")
        await wait_until_async(ticks, timeout=5, what="a firing")
        # WHEN it is paused
        paused = await q.pause_schedule(schedule_id)
        paused_at = time.time()
        assert paused.paused and (await q.get_schedule(schedule_id)).paused
        # AND declared again (as a deploy would), which must not unpause it
        assert (await q.schedule("test_record", queue=qname, schedule_id=schedule_id, every="1s",
                                 log=str(joblog), label="tick")).paused
        # THEN it does not fire while paused
        await q.enqueue_in(1.5, "test_record", queue=qname, log=str(joblog), label="marker")
        await wait_until_async(lambda: [r for r in done(joblog) if r["label"] == "marker"], timeout=5, what="marker")
        assert not [r for r in ticks() if r["enqueued_at"] > paused_at + 0.05]
        # WHEN resumed, it fires again
        resumed = await q.resume_schedule(schedule_id)
        resumed_at = time.time()
        assert not resumed.paused
        await wait_until_async(lambda: [r for r in ticks() if r["enqueued_at"] > resumed_at], timeout=5,
                       what="a firing after resume")
        assert await q.cancel_schedule(schedule_id)
        with pytest.raises(NotFoundError):
            await q.pause_schedule(schedule_id)


async def test_schedule_specs_are_validated(qconfig: QueueConfig, qname: str, unique: str) -> None:
    async with Queue(qconfig) as q:
        common = {"queue": qname, "schedule_id": f"bad_{unique}", "log": "/dev/null"}
        with pytest.raises(ValueError, match="exactly one"):
            await q.schedule("test_record", **common)
        with pytest.raises(ValueError, match="exactly one"):
            await q.schedule("test_record", cron="* * * * *", every=5, **common)
        with pytest.raises(ValueError, match="invalid cron"):
            await q.schedule("test_record", cron="every day", **common)
        with pytest.raises(ValueError, match="at least 1s"):
            await q.schedule("test_record", every="500ms", **common)
        with pytest.raises(ValueError, match="cron schedules only"):
            await q.schedule("test_record", every=5, timezone="UTC", **common)
        with pytest.raises(ValueError, match="unknown time zone"):
            await q.schedule("test_record", cron="* * * * *", timezone="Mars/Olympus", **common)
        with pytest.raises(ValueError, match="invalid schedule id"):
            await q.schedule("test_record", cron="* * * * *", **{**common, "schedule_id": "a.b"})
        # the server has no L (last day of month): refused before anything is published
        with pytest.raises(ValueError, match="invalid cron"):
            await q.schedule("test_record", cron="0 0 0 L * *", **common)
        assert f"bad_{unique}" not in [s.schedule_id for s in await q.list_schedules()]


def _at_least(items: list, n: int) -> list | None:  # type: ignore[type-arg]
    return items if len(items) >= n else None
