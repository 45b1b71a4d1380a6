"""Job-layer fixtures: a queue config on the session's nats-server, async tests, worker subprocesses."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jetmail.devstack.stack import StackState
from jetmail.queue import Queue, QueueConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS_MODULE = "tests.queue.tasks_for_tests"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on a fresh event loop (no asyncio plugin is installed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture(scope="session")
def qconfig(nats_url: str) -> QueueConfig:
    config = QueueConfig(nats_url=nats_url)

    async def init() -> None:
        async with Queue(config) as q:
            await q.ensure_streams()

    asyncio.run(init())
    return config


@pytest.fixture
def qname(unique: str) -> str:
    """A queue of this test's own, so tests sharing the server never see each other's jobs."""
    return f"t_{unique}"


@pytest.fixture
def joblog(tmp_path: Path) -> Path:
    return tmp_path / "jobs.jsonl"


@pytest.fixture
def worker_env(stack: StackState) -> dict[str, str]:
    """Environment for `python -m jetmail.cli worker` subprocesses pointed at the test stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETMAIL_")}
    env.update({
        "JETMAIL_NATS_URL": stack.services["nats"].url,
        "JETMAIL_TABLE_NAME": "jetmail-test",
        "JETMAIL_SIGNING_SECRET": "test-signing-secret-0123456789",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def spawn_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `jetmail worker` subprocesses (from the repo root so the test task module imports)."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, name: str = "worker") -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}-{len(procs)}.log").open("wb")
        cmd = [sys.executable, "-m", "jetmail.cli", "worker", *args, "--import", TASKS_MODULE]
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
