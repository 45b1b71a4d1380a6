"""`jetmail` commands for the job layer: init, worker, enqueue, dlq and schedules, with one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jetmail.cli import main
from jetmail.config import get_settings
from jetmail.devstack.stack import StackState
from jetmail.queue import QueueConfig, SyncClient
from stacktools import cli_runner, run_cli


@pytest.fixture
def cli(stack: StackState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    env = {"JETMAIL_NATS_URL": stack.services["nats"].url, "JETMAIL_TABLE_NAME": "jetmail-test",
           "JETMAIL_SIGNING_SECRET": "test-signing-secret-0123456789"}
    with cli_runner(env, tmp_path, monkeypatch) as runner:
        yield runner




def test_init_worker_and_dead_letter_commands(cli: CliRunner, qname: str) -> None:
    # GIVEN the streams and a job that always fails
    assert f"consumers for {qname}: ready" in run_cli(cli, "init", "--queue", qname).stdout
    out = run_cli(cli, "enqueue", "demo_fail", "-q", qname, "--max-retries", "0", "--job-id", "fail-1").stdout
    assert out.startswith("fail-1 seq=")
    assert "duplicate" in run_cli(cli, "enqueue", "demo_fail", "-q", qname, "--job-id", "fail-1").stdout
    # WHEN a burst worker runs it
    run_cli(cli, "worker", qname, "--burst")
    # THEN it is listed as a dead letter, readable and as JSON
    listing = run_cli(cli, "dlq", "list", "--queue", qname).stdout
    assert "demo_fail" in listing and "fail-1" in listing and "retries_exhausted" in listing
    [letter] = json.loads(run_cli(cli, "dlq", "list", "--queue", qname, "--json").stdout)
    shown = run_cli(cli, "dlq", "show", str(letter["seq"])).stdout
    assert "RuntimeError: demo_fail always fails" in shown and '"task": "demo_fail"' in shown
    assert json.loads(run_cli(cli, "dlq", "show", str(letter["seq"]), "--json").stdout)["job_id"] == "fail-1"
    # AND it can be replayed, one or all, and purged
    assert f"replayed {letter['seq']}" in run_cli(cli, "dlq", "replay", str(letter["seq"])).stdout
    run_cli(cli, "worker", qname, "--burst")
    assert "replayed 1 dead letter(s)" in run_cli(cli, "dlq", "replay", "--all", "--queue", qname).stdout
    run_cli(cli, "worker", qname, "--burst")
    assert "aborted" in run_cli(cli, "dlq", "purge", "--queue", qname, code=1, stdin="n\n").stderr
    assert "purged 1" in run_cli(cli, "dlq", "purge", "--queue", qname, "--yes").stdout
    assert "no dead letters" in run_cli(cli, "dlq", "list", "--queue", qname).stdout


def test_schedule_commands(cli: CliRunner, qconfig: QueueConfig, qname: str, unique: str) -> None:
    schedule_id = f"cli_{unique}"
    with SyncClient(qconfig) as q:
        q.ensure_streams([qname])
        q.schedule("demo_hello", queue=qname, schedule_id=schedule_id, cron="0 3 * * *",
                   timezone="Europe/Berlin", name="nightly")
    assert f"{schedule_id}  active  demo_hello -> {qname}/normal  0 0 3 * * * (Europe/Berlin)" in run_cli(
        cli, "schedules", "list").stdout
    assert f"{schedule_id}  paused" in run_cli(cli, "schedules", "pause", schedule_id).stdout
    listed = json.loads(run_cli(cli, "schedules", "list", "--json").stdout)
    assert [s["paused"] for s in listed if s["schedule_id"] == schedule_id] == [True]
    assert f"{schedule_id}  active" in run_cli(cli, "schedules", "resume", schedule_id).stdout
    assert f"cancelled {schedule_id}" in run_cli(cli, "schedules", "cancel", schedule_id).stdout
    missing = run_cli(cli, "schedules", "cancel", schedule_id, code=1)
    assert missing.stderr == f"error: no schedule '{schedule_id}'\n"
    assert "no schedule" in run_cli(cli, "schedules", "pause", schedule_id, code=1).stderr


@pytest.mark.parametrize(("args", "message"), [
    (["worker", "Bad-Queue"], "error: invalid queue name 'Bad-Queue'"),
    (["worker", "ok_queue", "--import", "no_such_module_xyz"], "error: cannot import no_such_module_xyz"),
    (["worker", "ok_queue", "-c", "2", "--reserve-high", "2"], "error: --reserve-high must be below --concurrency"),
    (["enqueue", "demo_hello", "-q", "ok_queue", "--payload", "{nope"], "error: --payload is not valid JSON"),
    (["enqueue", "demo_hello", "-q", "ok_queue", "--payload", "{}"],
     "error: invalid payload for task 'demo_hello': name: Field required"),
    (["dlq", "show", "999999999"], "error: no dead letter with sequence 999999999"),
    (["dlq", "replay"], "error: give either a SEQ or --all"),
    (["dlq", "show", "x"], "error: Invalid value for 'SEQ'"),
])
def test_bad_input_gets_one_error_line(cli: CliRunner, args: list[str], message: str) -> None:
    result = run_cli(cli, *args, code=2 if "Invalid value" in message else 1)
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_missing_settings_exit_2_with_the_setting_named(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for key in ("JETMAIL_TABLE_NAME", "JETMAIL_SIGNING_SECRET"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["dlq", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid settings: JETMAIL_TABLE_NAME: Field required")
