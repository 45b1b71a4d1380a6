"""`jetmail keys list`: each key's request limit and, for a rotated key, until when its old secret works."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from jetmail.devstack.stack import StackState, wait_until
from jetmail.services import Services
from stacktools import cli_runner, run_cli, stack_env


@pytest.fixture
def cli(stack: StackState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with cli_runner({**stack_env(stack), "JETMAIL_API_RATE_PER_MINUTE": "120"}, tmp_path, monkeypatch) as runner:
        yield runner




def table_rows(output: str) -> tuple[list[str], dict[str, str]]:
    """The header line and each key's row, by key id."""
    lines = output.splitlines()
    return lines, {line.split()[0]: line for line in lines[1:]}


def test_keys_list_shows_limits_and_grace_periods(cli: CliRunner, services: Services, unique: str) -> None:
    # GIVEN a key with its own limit, one on the default limit, one rotated with a grace period, one rotated
    # without, and a revoked one that had a grace period
    limited, _ = services.api_keys.create(f"limited-{unique}")
    plain, _ = services.api_keys.create(f"plain-{unique}", scopes=["send"])
    graced, _ = services.api_keys.create(f"graced-{unique}")
    rotated, _ = services.api_keys.create(f"rotated-{unique}")
    revoked, _ = services.api_keys.create(f"revoked-{unique}")
    run_cli(cli, "keys", "limit", limited.key_id, "--per-minute", "42")
    run_cli(cli, "keys", "rotate", graced.key_id, "--grace", "2h")
    run_cli(cli, "keys", "rotate", rotated.key_id)
    run_cli(cli, "keys", "rotate", revoked.key_id, "--grace", "2h")
    run_cli(cli, "keys", "revoke", revoked.key_id)
    ends = services.api_keys.get(graced.key_id).previous_expires_at  # type: ignore[union-attr]
    assert ends is not None
    assert timedelta(hours=1, minutes=59) < datetime.fromisoformat(ends) - datetime.now(UTC) <= timedelta(hours=2)

    # WHEN the keys are listed as a table
    output = run_cli(cli, "keys", "list").output
    lines, rows = table_rows(output)
    # THEN a header names the columns and each row has the limit and the grace period's end
    assert lines[0].split() == ["ID", "NAME", "SCOPES", "CREATED", "(UTC)", "STATE", "LIMIT/MIN", "OLD", "SECRET"]
    assert rows[limited.key_id].split()[-3:] == ["active", "42", "-"]
    assert rows[plain.key_id].split()[-4:] == ["active", "120", "(default)", "-"]
    assert rows[graced.key_id].split()[-4:] == ["120", "(default)", "until", ends[:19]]
    assert rows[rotated.key_id].split()[-1] == "-"
    assert rows[revoked.key_id].split()[-1] == "-" and " revoked " in rows[revoked.key_id]
    # AND the columns line up: every row's limit starts where the header's does
    column = lines[0].index("LIMIT/MIN")
    assert all(rows[k.key_id][column - 2:column] == "  " and rows[k.key_id][column] != " "
               for k in (limited, plain, graced, rotated, revoked))

    # WHEN they are listed as JSON  THEN each line is one key with the same facts, and no secret
    output = run_cli(cli, "keys", "list", "--json").output
    listed = {entry["key_id"]: entry for entry in map(json.loads, output.splitlines())}
    assert listed[limited.key_id]["rate_per_minute"] == 42 and listed[limited.key_id]["limit_per_minute"] == 42
    assert listed[plain.key_id]["rate_per_minute"] is None and listed[plain.key_id]["limit_per_minute"] == 120
    assert listed[graced.key_id]["grace_ends_at"] == ends and listed[graced.key_id]["rotated_at"]
    assert listed[rotated.key_id]["grace_ends_at"] is None and listed[rotated.key_id]["rotated_at"]
    assert listed[revoked.key_id]["grace_ends_at"] is None and listed[revoked.key_id]["revoked_at"]
    assert not [k for entry in listed.values() for k in entry if "digest" in k or "previous" in k]


def test_an_ended_grace_period_is_not_shown(cli: CliRunner, services: Services, unique: str) -> None:
    # GIVEN a key rotated with a one-second grace period
    key, _ = services.api_keys.create(f"short-grace-{unique}")
    run_cli(cli, "keys", "rotate", key.key_id, "--grace", "1s")
    shown = json.loads(next(line for line in run_cli(cli, "keys", "list", "--json").output.splitlines()
                            if key.key_id in line))
    assert shown["grace_ends_at"] is not None
    # WHEN the grace period has ended  THEN the list shows no old secret for the key
    ends = datetime.fromisoformat(shown["grace_ends_at"])
    wait_until(lambda: datetime.now(UTC) > ends, timeout=5, what="the grace period's end")
    _, rows = table_rows(run_cli(cli, "keys", "list").output)
    assert rows[key.key_id].split()[-1] == "-"


def test_keys_list_with_no_default_limit(cli: CliRunner, services: Services, unique: str) -> None:
    # GIVEN the API's default limit is off (0)  WHEN the keys are listed
    key, _ = services.api_keys.create(f"unlimited-{unique}")
    cli.env["JETMAIL_API_RATE_PER_MINUTE"] = "0"
    _, rows = table_rows(run_cli(cli, "keys", "list").output)
    entry = json.loads(next(line for line in run_cli(cli, "keys", "list", "--json").output.splitlines()
                            if key.key_id in line))
    # THEN a key on the default says there is no limit, in both forms
    assert rows[key.key_id].split()[-3:] == ["none", "(default)", "-"]
    assert entry["limit_per_minute"] is None
