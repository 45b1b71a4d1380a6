"""`jetmail worker` runs the transactional queue in a child process of its own when it is given other queues
too: the child sends the mail, is started again when it dies, stops with the worker, and stops by itself when
the worker is killed. Real stack of its own (nats-server, moto), the session's SMTP sink, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import (
    StackState,
    child_pids,
    free_port,
    http_ready,
    pid_alive,
    stop_process,
    wait_until,
)
from stacktools import Isolated

MAIL_QUEUES = ["email_transactional", "email_campaign", "email_ab_test", "email_maintenance"]
RESET = {"reset_url": "https://example.com/r/child", "expires_in_minutes": 30}


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("child"))
    yield own
    own.close()


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc, self.log, self.port = proc, log, port

    def healthy(self) -> bool:
        return http_ready(f"http://127.0.0.1:{self.port}/healthz")()

    def children(self) -> list[int]:
        """The worker's child processes running `jetmail worker email_transactional`."""
        found = []
        for pid in child_pids(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in cmdline and b"email_transactional" in cmdline:
                found.append(pid)
        return found


@pytest.fixture
def start_worker(isolated: Isolated, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*extra: str) -> Worker:
        port = free_port()
        log = tmp_path / f"worker{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "jetmail.cli", "worker", *MAIL_QUEUES, "--concurrency", "8",
                                     "--health-port", str(port), *extra],
                                    env=isolated.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(proc, log, port)
        started.append(worker)
        wait_until(worker.healthy, timeout=30, what="worker", proc=proc, log=log)
        return worker

    yield start
    for worker in started:
        children = worker.children()
        stop_process(worker.proc.pid)
        for pid in children:
            stop_process(pid)


def send_reset(client: TestClient, mailbox: Mailbox, to: str) -> None:
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET})
    assert resp.status_code == 202, resp.text
    message_id = resp.json()["id"]
    wait_until(lambda: client.get(f"/v1/messages/{message_id}").json()["status"] == "sent", timeout=30,
               what=f"{to} sent")
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what=f"{to} at the sink")


def nice(pid: int) -> int:
    """The nice value of the process's main thread (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, pid)


BASE_NICE = nice(0)


def started_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "worker started: queues=" in line]


def test_the_transactional_queue_runs_in_a_child_that_is_restarted_and_stops_with_the_worker(
        start_worker: Callable[..., Worker], client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a worker of the four mail queues, as the stack and template.yaml run it
    worker = start_worker()
    wait_until(lambda: len(worker.children()) == 1, timeout=30, what="the transactional child process")
    first = worker.children()[0]
    # THEN it runs the campaign queues itself and the transactional queue in the child, which sends the mail
    wait_until(lambda: len(started_lines(worker.log)) == 2, timeout=30, what="both processes started")
    queues = sorted(line.split("queues=")[1].split()[0] for line in started_lines(worker.log))
    assert queues == ["email_campaign,email_ab_test,email_maintenance", "email_transactional"]
    send_reset(client, mailbox, f"child-a-{unique}@example.com")
    # AND the worker runs its jobs at a lower CPU priority than the child's
    assert (nice(worker.proc.pid), nice(first)) == (min(BASE_NICE + 10, 19), BASE_NICE)

    # WHEN the child is killed
    os.kill(first, signal.SIGKILL)
    # THEN the worker reports itself unhealthy until it has started another (after a second), which sends the
    # next reset
    wait_until(lambda: not worker.healthy(), timeout=10, what="/healthz failing while no child runs")
    wait_until(lambda: [pid for pid in worker.children() if pid != first], timeout=30, what="a new child")
    second = worker.children()[0]
    wait_until(lambda: len(started_lines(worker.log)) == 3, timeout=30, what="the new child started")
    assert f"ended with signal {int(signal.SIGKILL)}" in worker.log.read_text()
    wait_until(worker.healthy, timeout=30, what="the worker healthy again")
    send_reset(client, mailbox, f"child-b-{unique}@example.com")
    assert nice(second) == BASE_NICE  # started again at the priority the first one had

    # WHEN the worker alone gets SIGTERM (not its process group)
    os.kill(worker.proc.pid, signal.SIGTERM)
    # THEN both stop, cleanly
    assert worker.proc.wait(timeout=60) == 0
    wait_until(lambda: not pid_alive(second), timeout=30, what="the child stopped")
    assert "stopping the email_transactional process" in worker.log.read_text()


def test_a_killed_worker_s_child_stops_by_itself(start_worker: Callable[..., Worker]) -> None:
    # GIVEN a worker and its transactional child
    worker = start_worker()
    wait_until(lambda: len(worker.children()) == 1, timeout=30, what="the transactional child process")
    child = worker.children()[0]
    # WHEN the worker is killed, with no chance to stop its child
    worker.proc.kill()
    worker.proc.wait(timeout=10)
    # THEN the child notices and stops as on SIGTERM
    wait_until(lambda: not pid_alive(child), timeout=40, what="the orphaned child stopped")
    assert "is gone; stopping" in worker.log.read_text()


def test_no_transactional_process_keeps_every_queue_in_one_process(
        start_worker: Callable[..., Worker], client: TestClient, mailbox: Mailbox, unique: str) -> None:
    worker = start_worker("--no-transactional-process")
    send_reset(client, mailbox, f"child-c-{unique}@example.com")
    assert worker.children() == []
    assert [line.split("queues=")[1].split()[0] for line in started_lines(worker.log)] == [",".join(MAIL_QUEUES)]
    assert nice(worker.proc.pid) == BASE_NICE  # its own transactional jobs keep the priority they had


def test_nice_sets_how_far_the_worker_lowers_its_priority(start_worker: Callable[..., Worker]) -> None:
    worker = start_worker("--nice", "3")
    wait_until(lambda: len(worker.children()) == 1, timeout=30, what="the transactional child process")
    assert (nice(worker.proc.pid), nice(worker.children()[0])) == (min(BASE_NICE + 3, 19), BASE_NICE)
