"""Real local stack for the test run: nats-server, moto server and the SMTP sink, started once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetmail.config import Settings
from jetmail.storage.table import Table
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import LocalStack, StackState

# boto3 needs credentials even for the moto server; these never leave loopback.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    local = LocalStack(tmp_path_factory.mktemp("stack"))
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


def make_settings(stack: StackState, **overrides: object) -> Settings:
    env = stack.env()
    values: dict[str, object] = {
        "nats_url": env["JETMAIL_NATS_URL"],
        "aws_endpoint_url": env["JETMAIL_AWS_ENDPOINT_URL"],
        "table_name": "jetmail-test",
        "signing_secret": env["JETMAIL_SIGNING_SECRET"],
        "smtp_host": "127.0.0.1",
        "smtp_port": int(env["JETMAIL_SMTP_PORT"]),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


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
    return tbl
