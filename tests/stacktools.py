"""Helpers for tests that need a stack of their own or jetmail subprocesses (imported by conftest and tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from jetmail.config import Settings, get_settings
from jetmail.devstack.stack import LocalStack, StackState

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from jetmail.services import Services


def api_client(services: Services, token: str, *, follow_redirects: bool = True) -> Iterator[TestClient]:
    """A client of the API app over ``services``, authenticated with ``token``, for the duration of a fixture:
    ``yield from api_client(services, api_token)``."""
    from fastapi.testclient import TestClient

    from jetmail.api.app import create_app

    with TestClient(create_app(services.settings, services=services),
                    headers={"Authorization": f"Bearer {token}"}, follow_redirects=follow_redirects) as client:
        yield client


def make_settings(stack: StackState, **overrides: object) -> Settings:
    env = stack.env()
    values: dict[str, object] = {
        "nats_url": env["JETMAIL_NATS_URL"],
        "aws_endpoint_url": env["JETMAIL_AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["JETMAIL_AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["JETMAIL_AWS_SECRET_ACCESS_KEY"],
        "table_name": "jetmail-test",
        "signing_secret": env["JETMAIL_SIGNING_SECRET"],
        "smtp_host": "127.0.0.1",
        "smtp_port": int(env["JETMAIL_SMTP_PORT"]),
        "rate_per_second": 0,
        "rate_per_day": 0,
        # the whole suite shares one admin key; tests of the request limit set their own
        "api_rate_per_minute": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def stack_env(stack: StackState, **extra: str) -> dict[str, str]:
    """Environment for jetmail subprocesses (workers, CLI) pointed at the test stack and test table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETMAIL_", "AWS_"))}
    env.update(stack.env())
    env.update({"JETMAIL_TABLE_NAME": "jetmail-test", "PYTHONUNBUFFERED": "1", **extra})
    return env


class Isolated:
    """A stack of its own (nats-server and moto; the session's SMTP sink) with services, an admin key and
    a worker process: for test modules whose data would slow the shared emulator for everyone else."""

    def __init__(self, stack: StackState, root: Path, **overrides: object) -> None:
        self.local = LocalStack(root, preferred_ports=False)
        own = self.local.up(["nats", "moto"])
        self.env = {**stack_env(stack), "JETMAIL_NATS_URL": own.services["nats"].url,
                    "JETMAIL_AWS_ENDPOINT_URL": own.services["moto"].url}
        self.settings = make_settings(stack, nats_url=own.services["nats"].url,
                                      aws_endpoint_url=own.services["moto"].url, **overrides)
        from jetmail.bootstrap import bootstrap
        from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
        from jetmail.services import Services

        list(bootstrap(self.settings, create_table=True))
        self.services = Services(self.settings)
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
            self.services.templates.save(content)
        _, self.token = self.services.api_keys.create("isolated", scopes=["admin"])
        self.worker: subprocess.Popen[bytes] | None = None
        self.root = root

    def start_worker(self, *extra: str) -> None:
        from jetmail.devstack.stack import free_port, http_ready, wait_until

        port = free_port()
        log = self.root / "worker.log"
        with log.open("wb") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "jetmail.cli", "worker", "email_transactional", "email_campaign",
                 "email_ab_test", "email_maintenance", "--concurrency", "32", "--health-port", str(port), *extra],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="worker", proc=self.worker,
                   log=log)

    def client(self) -> Iterator[TestClient]:
        """A client of the API app over this stack with its admin key (``yield from isolated.client()``)."""
        yield from api_client(self.services, self.token)

    def close(self) -> None:
        from jetmail.devstack.stack import stop_process

        if self.worker is not None:
            stop_process(self.worker.pid)
        self.services.queue.close()
        self.local.down()


def settle(count: Callable[[], int], *, quiet: float = 1.0, timeout: float = 20.0) -> int:
    """Wait until ``count()`` has not changed for ``quiet`` seconds; returns the final value (for checking that
    something stopped: mail after a pause, a campaign after a stop event)."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(now)
    raise AssertionError("count kept changing")


def emulator(url: str, what: str, body: dict[str, Any] | None = None, *, post: bool = False) -> dict[str, Any]:
    """GET (POST with ``body`` or ``post``) ``/_jetmail/<what>`` of the moto server at ``url``
    (jetmail.devstack.moto_server): ``requests``, ``timings``, ``faults``, ``ses-quota``."""
    data = json.dumps(body).encode() if body is not None else b"" if post else None
    request = urllib.request.Request(f"{url}/_jetmail/{what}", data=data,  # noqa: S310 - the moto we started
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return dict(json.loads(resp.read()))


def moto_faults(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set (with ``body``) or read the DynamoDB faults of the moto server at ``url``."""
    return emulator(url, "faults", body)


@contextmanager
def cli_runner(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """A runner for ``jetmail`` commands with exactly ``env``'s settings: the process's own ``JETMAIL_*``
    variables are removed, and it runs away from the repository so a dev stack's env file fills in nothing."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("JETMAIL_")]:
        monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield CliRunner(env=env)
    get_settings.cache_clear()


def run_cli(cli: CliRunner, *args: str, code: int = 0, stdin: str | None = None) -> Result:
    """One ``jetmail`` command, which must exit with ``code`` and print no traceback."""
    from jetmail.cli import main

    get_settings.cache_clear()
    result = cli.invoke(main, list(args), input=stdin)
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


class ReceiverServer(ThreadingHTTPServer):
    """``http.server`` for the tests' stand-in receivers (webhook endpoints, SNS, a flaky API...): a client that
    resets a kept-alive connection while the server waits for its next request is a client going away, not an
    error to print a traceback for; any other error is still reported."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
