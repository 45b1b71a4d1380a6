"""Jobs end to end against the real nats-server: run, retry, dead-letter, replay, de-duplicate, prioritise."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import tasks_for_tests  # noqa: F401 - registers the test tasks in the default registry
from queue_helpers import done, read_log, running_worker

from jetmail.devstack.stack import wait_until_async
from jetmail.queue import Backoff, JobValidationError, NotFoundError, Queue, QueueConfig, QueueError, Worker
from jetmail.queue.pull import Puller
from jetmail.queue.subjects import consumer_name, job_subject

FAST = Backoff(base=0.05, max=1, jitter=0.1)


async def test_enqueued_job_runs_once_with_its_payload(qconfig: QueueConfig, qname: str,
                                                       joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        # GIVEN a job on a fresh queue
        ref = await q.enqueue("test_record", queue=qname, log=str(joblog), label="hello")
        assert not ref.duplicate and ref.seq > 0
        # WHEN a worker runs
        async with running_worker(qconfig, [qname]):
            records = await wait_until_async(lambda: done(joblog), what="the job")
        # THEN it ran once, on attempt 1, with the job id and payload it was given
        assert [(r["job_id"], r["attempt"], r["label"]) for r in records] == [(ref.job_id, 1, "hello")]
        assert await q.pending(qname) == {"high": 0, "normal": 0, "low": 0}


async def test_payload_is_validated_before_publishing(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        with pytest.raises(JobValidationError, match="sleep: Input should be a valid number"):
            await q.enqueue("test_record", queue=qname, log=str(joblog), sleep="long")
        with pytest.raises(ValueError, match="invalid queue name"):
            await q.enqueue("test_record", queue="Not-Valid", log=str(joblog))
        with pytest.raises(ValueError, match="invalid priority"):
            await q.enqueue("test_record", queue=qname, priority="urgent", log=str(joblog))  # type: ignore[arg-type]
        assert sum((await q.pending(qname)).values()) == 0


async def test_failing_job_retries_with_backoff_then_dead_letters_then_replays(
        qconfig: QueueConfig, qname: str, joblog: Path, tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    flag.touch()
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        # GIVEN a job that fails while the flag file exists, with 2 retries
        ref = await q.enqueue("test_record", queue=qname, log=str(joblog), fail_while=str(flag),
                              max_retries=2, backoff=FAST)
        # WHEN it fails every attempt
        letters = await wait_until_async(lambda: q.dlq_list(queue=qname), what="the dead letter")
        # THEN it ran 1 + 2 times, waiting longer before each retry
        starts = [r for r in read_log(joblog) if r["event"] == "start"]
        assert [r["attempt"] for r in starts] == [1, 2, 3]
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(starts)]
        assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.1 * 0.9
        # AND the dead letter says why, without a traceback
        [letter] = letters
        assert (letter.job_id, letter.reason, letter.attempts) == (ref.job_id, "retries_exhausted", 3)
        assert letter.error == "RuntimeError: flag file present"
        assert letter.where and "tasks_for_tests.py" in letter.where
        assert letter.subject == job_subject(qname, "normal")
        assert (await q.dlq_show(letter.seq)).envelope == letter.envelope
        # WHEN the cause is fixed and the job replayed
        flag.unlink()
        replayed = await q.dlq_replay(letter.seq)
        # THEN it runs again under its own id and leaves the dead-letter stream
        assert replayed.job_id == ref.job_id and not replayed.duplicate
        records = await wait_until_async(lambda: done(joblog), what="the replayed job")
        assert [(r["job_id"], r["attempt"]) for r in records] == [(ref.job_id, 1)]
        assert await q.dlq_list(queue=qname) == []
        with pytest.raises(NotFoundError):
            await q.dlq_show(letter.seq)


async def test_retry_exception_sets_its_own_delay(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        await q.enqueue("test_record", queue=qname, log=str(joblog), fail_times=1, retry_delay=0.3,
                        backoff=Backoff(base=30))
        [record] = await wait_until_async(lambda: done(joblog), what="the retried job")
        start, second = [r for r in read_log(joblog) if r["event"] == "start"]
        assert record["attempt"] == 2 and second["t"] - start["t"] >= 0.25


async def test_job_that_keeps_killing_its_worker_is_dead_lettered(qconfig: QueueConfig, qname: str,
                                                                 joblog: Path) -> None:
    # a short ack_wait (on this test's own consumers) so unacknowledged deliveries come back quickly
    config = dataclasses.replace(qconfig, ack_wait=1.0)
    async with Queue(config) as q:
        await q.ensure_streams([qname])
        ref = await q.enqueue("test_record", queue=qname, log=str(joblog), max_retries=1)
        # GIVEN a job taken twice by workers that died before acknowledging it (all its 1 + 1 attempts)
        puller = Puller(q.nc, stream=config.stream, consumer=consumer_name(qname, "normal"))
        [first] = await puller.pull(1)
        [second] = await puller.pull(1, wait=5)
        assert (first.metadata.num_delivered, second.metadata.num_delivered) == (1, 2)
        await puller.close()
        # WHEN a healthy worker receives it again
        async with running_worker(config, [qname]):
            [letter] = await wait_until_async(lambda: q.dlq_list(queue=qname), what="the dead letter")
        # THEN it does not run it a third time but dead-letters it
        assert (letter.job_id, letter.reason, letter.attempts) == (ref.job_id, "delivery_limit", 3)
        assert read_log(joblog) == []


async def test_permanent_failure_skips_retries(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        await q.enqueue("test_record", queue=qname, log=str(joblog), permanent=True, max_retries=5)
        [letter] = await wait_until_async(lambda: q.dlq_list(queue=qname), what="the dead letter")
        assert (letter.reason, letter.attempts) == ("permanent_failure", 1)
        assert letter.error == "PermanentFailure: told to fail for good"


async def test_bad_messages_go_straight_to_the_dead_letter_stream(qconfig: QueueConfig, qname: str,
                                                                 joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        js = q.js
        subject = job_subject(qname, "normal")
        good = q.envelope("test_record", queue=qname, kwargs={"log": str(joblog)}).model_dump(mode="json")
        # GIVEN raw messages no enqueue() would produce
        await js.publish(subject, b"{not json")
        await js.publish(subject, json.dumps({"task": "test_record"}).encode())
        bad_model = {**good, "job_id": "bad-model", "payload": {"sleep": "x"}}
        await js.publish(subject, json.dumps(bad_model).encode())
        await js.publish(subject, json.dumps({**good, "job_id": "unknown", "task": "no_such_task"}).encode())
        # WHEN a worker sees them
        async with running_worker(qconfig, [qname]):
            letters = await wait_until_async(lambda: _at_least(q.dlq_list(queue=qname), 4), what="4 dead letters")
        # THEN each is dead-lettered on first sight with the reason
        expected = [("invalid_payload", 1)] * 3 + [("unknown_task", 1)]
        assert [(x.reason, x.attempts) for x in letters] == expected
        assert letters[0].raw == "{not json" and letters[0].envelope is None
        assert "job_id: Field required" in letters[1].error
        assert letters[2].job_id == "bad-model" and "sleep" in letters[2].error
        assert letters[3].job_id == "unknown" and "no_such_task" in letters[3].error
        assert done(joblog) == []
        # AND only the ones holding an envelope can be replayed
        with pytest.raises(QueueError, match="cannot be replayed"):
            await q.dlq_replay(letters[0].seq)
        assert await q.dlq_purge(queue=qname) == 4


async def _at_least(coro, n):  # type: ignore[no-untyped-def]
    items = await coro
    return items if len(items) >= n else None


async def test_duplicate_job_id_runs_once(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        # GIVEN the same job id enqueued three ways, as an at-least-once caller would
        first = await q.enqueue("test_record", queue=qname, job_id="order:42/receipt", log=str(joblog))
        again = await q.enqueue("test_record", queue=qname, job_id="order:42/receipt", log=str(joblog))
        many = await q.enqueue_many("test_record", [{"log": str(joblog)}] * 2, queue=qname,
                                    job_ids=["order:42/receipt", "other"])
        # THEN the stream kept one copy
        assert not first.duplicate and again.duplicate and again.seq == first.seq
        assert [r.duplicate for r in many] == [True, False]
        # AND a burst worker runs it once
        await Worker(qconfig, [qname], burst=True, handle_signals=False).run()
        assert sorted(r["job_id"] for r in done(joblog)) == ["order:42/receipt", "other"]


async def test_enqueue_many_publishes_in_bulk(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        payloads = [{"log": str(joblog), "label": str(i)} for i in range(200)]
        refs = await q.enqueue_many("test_record", payloads, queue=qname, priority="low")
        assert len({r.job_id for r in refs}) == 200 and not any(r.duplicate for r in refs)
        assert (await q.pending(qname))["low"] == 200
        await Worker(qconfig, [qname], burst=True, concurrency=50, handle_signals=False).run()
        assert sorted(int(r["label"]) for r in done(joblog)) == list(range(200))


async def test_high_priority_overtakes_waiting_normal_jobs(qconfig: QueueConfig, qname: str,
                                                           joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        # GIVEN a worker of concurrency 1 busy with the first of several normal jobs
        await q.enqueue_many("test_record", [{"log": str(joblog), "label": f"n{i}", "sleep": 0.15}
                                             for i in range(5)], queue=qname)
        async with running_worker(qconfig, [qname], concurrency=1):
            await wait_until_async(lambda: read_log(joblog), what="the first normal job to start")
            # WHEN a high-priority job arrives
            await q.enqueue("test_record", queue=qname, priority="high", log=str(joblog), label="high")
            records = await wait_until_async(lambda: _len_at_least(done(joblog), 6), timeout=15, what="all jobs")
        # THEN it runs right after the job in progress, before the remaining normal ones
        assert [r["label"] for r in records] == ["n0", "high", "n1", "n2", "n3", "n4"]


async def test_reserved_slots_start_a_high_job_while_normal_jobs_fill_the_rest(qconfig: QueueConfig, qname: str,
                                                                                joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        # GIVEN a worker of concurrency 3 keeping 1 slot for high-priority jobs, and more long normal jobs than slots
        await q.enqueue_many("test_record", [{"log": str(joblog), "label": f"n{i}", "sleep": 1.0}
                                             for i in range(4)], queue=qname)
        async with running_worker(qconfig, [qname], concurrency=3, reserve_high=1):
            await wait_until_async(lambda: _len_at_least(_starts(joblog), 2), what="two normal jobs to start")
            # WHEN a high-priority job arrives while both unreserved slots are busy
            await q.enqueue("test_record", queue=qname, priority="high", log=str(joblog), label="high")
            await wait_until_async(lambda: _len_at_least(done(joblog), 5), timeout=20, what="all jobs")
        log = read_log(joblog)
    # THEN it started before any normal job finished, and normal jobs never held more than 2 slots at once
    started = {r["label"]: r["t"] for r in log if r["event"] == "start"}
    first_done = min(r["t"] for r in log if r["event"] == "done" and r["label"] != "high")
    assert started["high"] < first_done
    running = max_running = 0
    for r in sorted((r for r in log if r["label"] != "high"), key=lambda r: (r["t"], r["event"] == "start")):
        running += 1 if r["event"] == "start" else -1
        max_running = max(max_running, running)
    assert max_running == 2


def test_reserve_high_must_leave_a_slot_for_other_jobs(qconfig: QueueConfig, qname: str) -> None:
    with pytest.raises(ValueError, match="reserve_high"):
        Worker(qconfig, [qname], concurrency=2, reserve_high=2)


def _starts(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_log(path) if r["event"] == "start"]


def _len_at_least(items: list, n: int) -> list | None:  # type: ignore[type-arg]
    return items if len(items) >= n else None


async def test_normal_and_low_jobs_start_promptly_on_an_idle_worker(qconfig: QueueConfig, qname: str,
                                                                    joblog: Path) -> None:
    async with Queue(qconfig) as q, running_worker(qconfig, [qname]):
        for priority in ("low", "normal", "high"):
            await q.enqueue("test_record", queue=qname, priority=priority, log=str(joblog), label=priority)
            [record] = await wait_until_async(lambda p=priority: [r for r in done(joblog) if r["label"] == p],
                                      what=f"the {priority} job")
            # the idle long-poll is 0.1 s; allow scheduling noise on a shared machine
            assert record["t"] - record["enqueued_at"] < 0.5


async def test_a_job_on_one_of_several_idle_queues_starts_before_the_others_polls_run_out(
        qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    queues = [qname, *(f"{qname}_{i}" for i in range(3))]
    async with Queue(qconfig) as q:
        await q.ensure_streams(queues)
        # GIVEN an idle worker of four queues whose long-polls last 5 s
        async with running_worker(qconfig, queues, poll_interval=5.0):
            # WHEN a high-priority job arrives on one of them
            await q.enqueue("test_record", queue=queues[2], priority="high", log=str(joblog), label="one")
            [record] = await wait_until_async(lambda: done(joblog), timeout=15, what="the job")
    # THEN it started when its own poll returned, not when the other three polls ran out 5 s after they began
    assert record["t"] - record["enqueued_at"] < 2.5


async def test_sync_handlers_run_in_a_thread(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname])
        await q.enqueue_many("test_record_sync", [{"log": str(joblog), "sleep": 0.3}] * 3, queue=qname)
        await Worker(qconfig, [qname], burst=True, handle_signals=False).run()
        records = done(joblog)
        assert len(records) == 3
        # run concurrently, not one after the other on the event loop
        starts = sorted(r["t"] for r in read_log(joblog) if r["event"] == "start")
        assert starts[-1] - starts[0] < 0.3


async def test_burst_worker_exits_when_its_queues_are_empty(qconfig: QueueConfig, qname: str,
                                                            joblog: Path) -> None:
    async with Queue(qconfig) as q:
        await q.ensure_streams([qname, f"{qname}_b"])
        await q.enqueue("test_record", queue=qname, log=str(joblog), fail_times=1, backoff=FAST)
        await q.enqueue("test_record", queue=f"{qname}_b", priority="low", log=str(joblog))
        worker = Worker(qconfig, [qname, f"{qname}_b"], burst=True, handle_signals=False)
        # a job waiting out its retry delay still counts as work to do
        await asyncio.wait_for(worker.run(), timeout=15)
        assert sorted((r["queue"], r["attempt"]) for r in done(joblog)) == [(qname, 2), (f"{qname}_b", 1)]
        assert worker.stats["ack"] == 2 and worker.stats["retry"] == 1


async def test_startup_hook_fills_resources_for_jobs(qconfig: QueueConfig, qname: str, joblog: Path) -> None:
    from jetmail.queue import JobContext, Registry

    reg = Registry()
    seen: list[object] = []
    events: list[str] = []

    @reg.task("uses_resources")
    async def uses_resources(job: dict, ctx: JobContext) -> None:  # type: ignore[type-arg]
        seen.append(ctx.resources["client"])

    async def startup(resources: dict) -> None:  # type: ignore[type-arg]
        events.append("startup")
        resources["client"] = "the-client"

    def shutdown(resources: dict) -> None:  # type: ignore[type-arg]
        events.append("shutdown")

    async with Queue(qconfig, registry=reg) as q:
        await q.ensure_streams([qname])
        await q.enqueue("uses_resources", queue=qname)
        await Worker(qconfig, [qname], registry=reg, burst=True, on_startup=startup, on_shutdown=shutdown,
                     handle_signals=False).run()
    assert seen == ["the-client"] and events == ["startup", "shutdown"]


async def test_health_endpoint_reports_the_worker_state(qconfig: QueueConfig, qname: str,
                                                        joblog: Path) -> None:
    async with Queue(qconfig) as q, running_worker(qconfig, [qname], health_port=0) as worker:
        assert await _http_status(worker.health_port, "/healthz") == 200
        assert await _http_status(worker.health_port, "/other") == 404
        # while it finishes a running job after being told to stop, it no longer reports healthy
        await q.enqueue("test_record", queue=qname, log=str(joblog), sleep=0.5)
        await wait_until_async(lambda: read_log(joblog), what="the job to start")
        worker.stop()
        assert await _http_status(worker.health_port, "/healthz") == 503


async def _http_status(port: int | None, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])
