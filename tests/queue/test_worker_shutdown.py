"""`jetmail worker` stops within a bounded time on SIGTERM, whatever its NATS server does meanwhile."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks_for_tests  # noqa: F401 - registers the test tasks in the default registry
from queue_helpers import done

from jetmail.devstack.stack import free_port, http_ready, nats_server_binary, stop_process, wait_until
from jetmail.queue import QueueConfig, SyncClient


class OwnNats:
    """A nats-server of the test's own on a fixed port and store, so it can be stopped and started again."""

    def __init__(self, root: Path) -> None:
        self.port, self.monitor = free_port(), free_port()
        self.store = root / "nats-store"
        self.log = root / "nats.log"
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
                 "-sd", str(self.store)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(http_ready(f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true"), timeout=20,
                   what="nats-server", proc=self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnNats]:
    server = OwnNats(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


_RECONNECT_FAILED = "Connect call failed"


def _enqueue(config: QueueConfig, qname: str, joblog: Path, label: str, count: int) -> None:
    with SyncClient(config) as q:
        q.ensure_streams([qname])
        q.enqueue_many("test_record", [{"log": str(joblog), "label": label, "sleep": 0.05}] * count, queue=qname)


def _stop_and_wait_for_reconnects(server: OwnNats, worker: subprocess.Popen[bytes]) -> None:
    """Stop the server, then wait until the worker has failed to reconnect twice (its pulls pile up meanwhile)."""
    log: Path = worker.log_path  # type: ignore[attr-defined]
    before = log.read_text().count(_RECONNECT_FAILED)
    server.stop()
    wait_until(lambda: log.read_text().count(_RECONNECT_FAILED) >= before + 2, timeout=20,
                  what="reconnect attempts")


def test_sigterm_ends_a_worker_whose_nats_went_away_after_a_restart(
        own_nats: OwnNats, qname: str, joblog: Path, worker_env: dict[str, str],
        spawn_worker: Callable[..., Any]) -> None:
    # GIVEN a busy worker of four queues (like the stack's) on a NATS server of its own
    config = QueueConfig(nats_url=own_nats.url)
    queues = [qname, *(f"{qname}_{i}" for i in range(3))]
    with SyncClient(config) as q:
        q.ensure_streams(queues)
    _enqueue(config, qname, joblog, "before", 20)
    worker_env["JETMAIL_NATS_URL"] = own_nats.url
    worker = spawn_worker(*queues, "--concurrency", "4")
    wait_until(lambda: len(done(joblog)) >= 20, timeout=30, what="the first jobs")
    # AND the server restarted under it, after which it reconnected and took jobs again
    own_nats.stop()
    own_nats.start()
    _enqueue(config, qname, joblog, "after", 10)
    wait_until(lambda: len(done(joblog)) >= 30, timeout=30, what="jobs after the restart")
    # WHEN the server goes away again and the idle worker, trying to reconnect, gets SIGTERM
    _stop_and_wait_for_reconnects(own_nats, worker)
    worker.send_signal(signal.SIGTERM)
    # THEN it exits within a few seconds and says so in its log
    started = time.monotonic()
    try:
        code = worker.wait(timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running 8s after SIGTERM:\n{worker.log_path.read_text()[-3000:]}")
    log = worker.log_path.read_text()
    assert code == 0, log[-3000:]
    assert "worker stopped" in log, log[-3000:]
    assert time.monotonic() - started < 8


def test_sigterm_ends_a_worker_whose_nats_is_down(
        own_nats: OwnNats, qname: str, joblog: Path, worker_env: dict[str, str],
        spawn_worker: Callable[..., Any]) -> None:
    # GIVEN an idle worker whose NATS server stopped
    config = QueueConfig(nats_url=own_nats.url)
    _enqueue(config, qname, joblog, "before", 3)
    worker_env["JETMAIL_NATS_URL"] = own_nats.url
    worker = spawn_worker(qname)
    wait_until(lambda: len(done(joblog)) >= 3, timeout=30, what="the jobs")
    _stop_and_wait_for_reconnects(own_nats, worker)
    # WHEN it gets SIGTERM
    worker.send_signal(signal.SIGTERM)
    # THEN it exits 0 within a few seconds, with its closing line
    try:
        code = worker.wait(timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running 8s after SIGTERM:\n{worker.log_path.read_text()[-3000:]}")
    log = worker.log_path.read_text()
    assert code == 0 and "worker stopped" in log, log[-3000:]
