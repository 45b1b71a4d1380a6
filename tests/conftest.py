"""Real local stack for the test run: nats-server, moto server and the SMTP sink, started once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jetmail.config import Settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import LocalStack, StackState
from jetmail.storage.table import Table
from stacktools import make_settings, stack_env

if TYPE_CHECKING:
    from jetmail.services import Services

# jetmail's clients get the local stack's credentials from its settings, as a user's shell does; AWS
# variables of the machine running the tests must not hide a path that forgets them.
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    local = LocalStack(tmp_path_factory.mktemp("stack"), preferred_ports=False)
    try:
        state = local.up(["nats", "moto", "smtp"])
        yield state
    finally:
        local.down()


@pytest.fixture(scope="session")
def nats_url(stack: StackState) -> str:
    return stack.services["nats"].url


@pytest.fixture(scope="session")
def mailbox(stack: StackState) -> Mailbox:
    return Mailbox(stack.maildir)


@pytest.fixture
def unique() -> str:
    """A short unique token for names that must not collide between tests sharing the stack."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def settings(stack: StackState) -> Settings:
    return make_settings(stack)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def table(settings: Settings) -> Table:

    tbl = Table(settings)
    tbl.create()
    Table(settings, name=settings.stats_table).create()
    return tbl


@pytest.fixture(scope="session")
def app_env(stack: StackState) -> dict[str, str]:
    """The environment a jetmail process (worker, CLI, Lambda) gets on the test stack."""
    return stack_env(stack)


@pytest.fixture(scope="session")
def services(settings: Settings, table: Table) -> Iterator[Services]:
    """The core services on the test stack, with streams ready and the example templates loaded."""
    from jetmail.bootstrap import bootstrap
    from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
    from jetmail.services import Services

    list(bootstrap(settings, create_table=False))
    svc = Services(settings)
    for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
        svc.templates.save(content)
    yield svc
    svc.queue.close()


@pytest.fixture(scope="session")
def api_token(services: Services) -> str:
    _, token = services.api_keys.create("tests", scopes=["admin"])
    return token


@pytest.fixture(scope="session")
def email_worker(stack: StackState, services: Services, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """A real `jetmail worker` process for the email queues, as the local stack runs it."""
    from jetmail.devstack.stack import free_port, http_ready, stop_process, wait_until

    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetmail.cli", "worker", "email_transactional", "email_campaign",
             "email_ab_test", "email_maintenance", "--concurrency", "32", "--health-port", str(port)],
            env=stack_env(stack), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="email worker", proc=proc, log=log)
    yield proc
    stop_process(proc.pid)


