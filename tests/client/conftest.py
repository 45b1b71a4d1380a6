"""The API served over HTTP for the client and remote-CLI tests: one uvicorn for the session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from jetmail.client import Client
from jetmail.devstack.stack import free_port, http_ready, stop_process, wait_until
from stacktools import cli_runner

if TYPE_CHECKING:
    from jetmail.services import Services


@pytest.fixture(scope="session")
def api_url(app_env: dict[str, str], services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API under uvicorn on a free port, as `jetmail dev up` serves it."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "jetmail.api.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                env=app_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(http_ready(f"http://127.0.0.1:{port}/health"), timeout=60, what="uvicorn", proc=proc, log=log)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc.pid)


@pytest.fixture
def api(api_url: str, api_token: str) -> Iterator[Client]:
    with Client(api_url, api_token) as client:
        yield client


@pytest.fixture
def cli(api_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    # no local settings at all: remote mode must need only the URL and the key
    with cli_runner({"JETMAIL_API_KEY": api_token}, tmp_path, monkeypatch) as runner:
        yield runner
