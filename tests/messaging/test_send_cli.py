"""`jetmail send`: one transactional message from the command line, through the local services."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from stacktools import cli_runner, run_cli, stack_env


@pytest.fixture
def cli(stack: StackState, email_worker: subprocess.Popen[bytes], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with cli_runner(stack_env(stack), tmp_path, monkeypatch) as runner:
        yield runner




def test_send_inline_content_with_copies_attachments_and_metadata(cli: CliRunner, mailbox: Mailbox, tmp_path: Path,
                                                                  unique: str) -> None:
    to, cc = f"cli-{unique}@example.com", f"cli-cc-{unique}@example.com"
    (tmp_path / "body.html").write_text('<p>Hi {{ who }}</p><img src="cid:logo">', encoding="utf-8")
    (tmp_path / "body.txt").write_text("Hi {{ who }}", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    # WHEN an operator sends a message from the command line
    result = run_cli(cli, "send", "--to", to, "--subject", "For {{ who }}", "--html-file", str(tmp_path / "body.html"),
                 "--text-file", str(tmp_path / "body.txt"), "--var", "who=Ada", "--cc", cc,
                 "--attach", str(tmp_path / "notes.csv"), "--inline-image", f"logo={tmp_path / 'logo.png'}",
                 "--header", "X-Ticket: 99", "--tag", "ops", "--metadata", "ticket=99", "--json")
    message = json.loads(result.output)
    assert message["status"] == "queued" and message["tags"] == ["ops"] and message["metadata"] == {"ticket": "99"}
    # THEN it arrives with every part
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=20, what="cli message")
    msg = mailbox.message(mailbox.for_recipient(to)[0].id)
    assert msg["Subject"] == "For Ada" and cc in str(msg["Cc"]) and msg["X-Ticket"] == "99"
    names = {part.get_filename(): part.get_content_type() for part in msg.walk() if part.get_filename()}
    assert names == {"notes.csv": "text/csv", "logo.png": "image/png"}


def test_send_refusals_are_one_clear_error(cli: CliRunner, tmp_path: Path, unique: str) -> None:
    (tmp_path / "run.sh").write_text("echo hi", encoding="utf-8")
    result = run_cli(cli, "send", "--to", f"cli-bad-{unique}@example.com", "--subject", "x", "--text-file",
                 str(tmp_path / "run.sh"), "--attach", str(tmp_path / "run.sh"), "--header", "From: x@example.com",
                 code=1)
    assert ".sh files are refused" in result.output and "set by jetmail" in result.output
    both = run_cli(cli, "send", "--to", f"cli-bad-{unique}@example.com", "--template", "welcome", "--subject", "x",
               code=1)
    assert "not both" in both.output


def test_send_whose_context_does_not_render_is_one_clear_error(cli: CliRunner, unique: str) -> None:
    # WHEN a local send lacks a variable its template prints
    result = run_cli(cli, "send", "--to", f"cli-ctx-{unique}@example.com", "--template", "password_reset",
                     "--var", "name=Ada", code=1)
    # THEN the error line is the template's problem, as the API's 422 states it, without an exception's name
    line = result.output.strip()
    assert line.startswith("error: template password_reset") and "'reset_url' is undefined" in line
    assert "Error:" not in line and "Traceback" not in result.output
