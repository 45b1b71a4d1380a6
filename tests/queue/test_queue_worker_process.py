"""`jetmail worker` as a real process: SIGTERM handling and several workers sharing a queue."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tasks_for_tests  # noqa: F401 - registers the test tasks in the default registry
from queue_helpers import done, read_log

from jetmail.devstack.stack import free_port, wait_until
from jetmail.queue import QueueConfig, SyncClient
from jetmail.queue.worker import YOUNG_COLLECTION_AFTER


def test_sigterm_mid_batch_finishes_running_jobs_and_loses_nothing(
        qconfig: QueueConfig, qname: str, joblog: Path, spawn_worker: Callable[..., Any]) -> None:
    # GIVEN 12 slow jobs and a worker running 4 at a time
    with SyncClient(qconfig) as q:
        q.ensure_streams([qname])
        refs = q.enqueue_many("test_record", [{"log": str(joblog), "label": str(i), "sleep": 0.6}
                                              for i in range(12)], queue=qname)
    first = spawn_worker(qname, "--concurrency", "4")
    # WHEN it gets SIGTERM while its first batch is running
    wait_until(lambda: len(read_log(joblog)) >= 4, timeout=15, what="the first batch to start")
    first.send_signal(signal.SIGTERM)
    # THEN it finishes the jobs it had started and exits 0
    assert first.wait(timeout=20) == 0, first.log_path.read_text()
    started = {r["job_id"] for r in read_log(joblog) if r["event"] == "start"}
    assert started <= {r["job_id"] for r in done(joblog)}
    assert len(done(joblog)) < 12
    # AND a second worker runs the rest: every job exactly once
    second = spawn_worker(qname, "--burst")
    assert second.wait(timeout=30) == 0, second.log_path.read_text()
    assert sorted(r["job_id"] for r in done(joblog)) == sorted(r.job_id for r in refs)


def test_jobs_outliving_the_grace_period_are_handed_back(
        qconfig: QueueConfig, qname: str, joblog: Path, spawn_worker: Callable[..., Any]) -> None:
    # GIVEN jobs far longer than the worker's grace period (only on their first attempt)
    with SyncClient(qconfig) as q:
        q.ensure_streams([qname])
        refs = q.enqueue_many("test_record", [{"log": str(joblog), "sleep": 60}] * 3, queue=qname)
    first = spawn_worker(qname, "--concurrency", "3", "--grace-period", "0.5")
    wait_until(lambda: len(read_log(joblog)) >= 3, timeout=15, what="the jobs to start")
    # WHEN it is stopped
    first.send_signal(signal.SIGTERM)
    # THEN it gives up on them after the grace period, hands them back and exits 0
    assert first.wait(timeout=15) == 0, first.log_path.read_text()
    assert done(joblog) == []
    # AND another worker picks them up at once (not after ack_wait) and completes them
    second = spawn_worker(qname, "--burst")
    assert second.wait(timeout=20) == 0, second.log_path.read_text()
    assert sorted((r["job_id"], r["attempt"]) for r in done(joblog)) == sorted((r.job_id, 2) for r in refs)


def test_two_workers_share_a_queue_without_running_a_job_twice(
        qconfig: QueueConfig, qname: str, joblog: Path, spawn_worker: Callable[..., Any]) -> None:
    with SyncClient(qconfig) as q:
        q.ensure_streams([qname])
    # GIVEN two worker processes on the same queue, both up and healthy
    ports = [free_port(), free_port()]
    workers = [spawn_worker(qname, "--concurrency", "4", "--health-port", str(port)) for port in ports]
    for port in ports:
        wait_until(lambda p=port: _healthy(p), timeout=15, what=f"worker health on {port}")
    # WHEN 200 short jobs arrive
    with SyncClient(qconfig) as q:
        refs = q.enqueue_many("test_record", [{"log": str(joblog), "sleep": 0.01}] * 200, queue=qname)
    wait_until(lambda: len(done(joblog)) >= 200, timeout=30, what="200 jobs")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=20) == 0, worker.log_path.read_text()
    # THEN each job started and finished exactly once, and both workers took a share
    starts = Counter(r["job_id"] for r in read_log(joblog) if r["event"] == "start")
    assert sorted(starts) == sorted(r.job_id for r in refs) and set(starts.values()) == {1}
    assert len(done(joblog)) == 200
    assert len({r["pid"] for r in done(joblog)}) == 2


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_a_worker_process_collects_garbage_in_fewer_larger_sweeps(
        qconfig: QueueConfig, qname: str, joblog: Path, spawn_worker: Callable[..., Any]) -> None:
    # GIVEN a job for a `jetmail worker` process
    with SyncClient(qconfig) as q:
        q.ensure_streams([qname])
        q.enqueue("test_record", queue=qname, payload={"log": str(joblog), "label": "gc"})
    # WHEN the process runs it
    worker = spawn_worker(qname, "--burst")
    assert worker.wait(timeout=30) == 0, worker.log_path.read_text()
    # THEN the job ran with the worker's collector: what was loaded at start frozen, young collections far apart
    (record,) = done(joblog)
    assert record["gc_threshold"][0] == YOUNG_COLLECTION_AFTER
    assert record["gc_frozen"] > 10_000
