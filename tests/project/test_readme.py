"""The quick starts, run exactly as written in a clean shell: no AWS variables, an empty HOME; and the docs'
links, followed.

The shell blocks marked ``<!-- quickstart: NAME -->`` in README.md and the guides it leads to are extracted
and run in one bash process, in order, from a folder laid out like the repository root (``.venv`` is the
project's), as a new user pastes them after ``make setup``. A step that fails stops the script
(``set -euo pipefail``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until

ROOT = Path(__file__).resolve().parents[2]
QUICKSTARTS = ("sending", "contacts", "campaigns")
# where a new user meets them, in this order
QUICKSTART_PAGES = ("README.md", "docs/guide/audience.md", "docs/guide/campaigns.md")
BLOCK = re.compile(r"<!-- quickstart: (?P<name>[\w-]+) -->\n```sh\n(?P<body>.*?)\n```", re.S)


def quickstarts(*pages: str) -> dict[str, str]:
    return {m["name"]: m["body"] for page in pages for m in BLOCK.finditer((ROOT / page).read_text())}


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "repo"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    yield work
    subprocess.run([".venv/bin/jetmail", "dev", "down"], cwd=work, env=clean_env(tmp_path),
                   capture_output=True, timeout=60, check=False)


def clean_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


def test_the_docs_mark_each_quick_start_once() -> None:
    found = [m["name"] for page in QUICKSTART_PAGES for m in BLOCK.finditer((ROOT / page).read_text())]
    assert found == list(QUICKSTARTS)


def test_quick_starts_run_as_written_in_a_clean_shell(workdir: Path, tmp_path: Path) -> None:
    # GIVEN the README's quick starts and a shell with nothing but PATH and an empty HOME
    blocks = quickstarts(*QUICKSTART_PAGES)
    script = "set -euo pipefail\n" + "\n".join(blocks[name] for name in QUICKSTARTS) + "\n"
    env = clean_env(tmp_path)
    assert not any(k.startswith(("AWS_", "JETMAIL_")) for k in env)

    # WHEN they run in order, in one shell
    done = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300, check=False)

    # THEN every step succeeded ...
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert "error:" not in done.stderr
    # ... the curl steps reached the running API (a message id, a queued-or-later status, a sent campaign)
    assert re.search(r'"id":\s*"msg_', done.stdout)
    assert re.search(r"cmp_\w+\s+sent\s", done.stdout)
    # ... and the mail arrived at the stack's SMTP sink: the reset, and the campaign for both contacts
    box = Mailbox(workdir / ".jetmail" / "dev" / "mail")

    def subjects(address: str) -> list[str]:
        return [str(box.message(e.id)["Subject"]) for e in box.for_recipient(address)]

    wait_until(lambda: len(subjects("ada@example.com")) >= 2 and len(subjects("grace@example.com")) >= 1,
               timeout=30, what="the quick starts' mail at the sink")
    assert len(subjects("ada@example.com")) == 2, "the campaign mails a recipient once, whatever her sources"
    assert len(subjects("grace@example.com")) == 1


def test_cli_reads_the_local_stack_settings_in_a_clean_shell(workdir: Path, tmp_path: Path) -> None:
    # GIVEN a running local stack and a shell without AWS variables
    env = clean_env(tmp_path)
    up = subprocess.run([".venv/bin/jetmail", "dev", "up", "--infra-only"], cwd=workdir, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
    assert up.returncode == 0, up.stderr
    # WHEN commands that touch DynamoDB run
    for command in (["keys", "create", "--name", "backend"], ["lists", "create", "news"], ["campaign", "list"],
                    ["suppressions", "list"], ["templates", "list"]):
        done = subprocess.run([".venv/bin/jetmail", *command], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        # THEN they work: the settings file of the stack supplies the endpoint and its credentials
        assert done.returncode == 0, f"{command}: {done.stderr}"
        assert "Credentials" not in done.stderr
    assert os.environ.get("AWS_ACCESS_KEY_ID") is None
