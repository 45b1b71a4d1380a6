"""`jetmail contacts`, `jetmail lists` and `jetmail campaign report|failures` with `--api-url`: through the real
API under uvicorn, checked in the store and against the same commands run locally."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner, Result

from jetmail.audience.model import ContactNotFound
from jetmail.cli import main
from jetmail.client import Client
from jetmail.commands.contacts import REMOTE_PART_BYTES
from jetmail.config import get_settings
from jetmail.devstack.stack import free_port, wait_until
from jetmail.scheduler import tick

if TYPE_CHECKING:
    from jetmail.devstack.mailbox import Mailbox
    from jetmail.services import Services

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


def remote(cli: CliRunner, api_url: str, *args: str, code: int = 0) -> Result:
    result = cli.invoke(main, list(args), env={"JETMAIL_API_URL": api_url})
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def local(cli: CliRunner, app_env: dict[str, str], *args: str) -> Result:
    get_settings.cache_clear()
    result = cli.invoke(main, list(args), env={**app_env, "JETMAIL_API_KEY": None})
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result


def test_remote_lists_and_an_import_larger_than_one_request(cli: CliRunner, api_url: str, services: Services,
                                                           tmp_path: Path, unique: str) -> None:
    # GIVEN a list made and found through the API
    name = f"remote-{unique}"
    list_id = remote(cli, api_url, "lists", "create", name).output.splitlines()[-1]
    assert services.contacts.get_list(list_id).name == name
    assert f"{list_id}  " in remote(cli, api_url, "lists", "list").output
    # AND a CSV above the API's body limit: wide rows, a record spanning two lines, a bad row at the end
    notes = "n" * 7000
    records = [f"p{i}-{unique}@example.com,P{i},{notes}\n" for i in range(40)]
    records.insert(35, f'multi-{unique}@example.com,Multi,"first line\nsecond line"\n')
    records.append("not-an-address,Bad,x\n")
    text = "email,name,notes\n" + "".join(records)
    assert len(text) > max(REMOTE_PART_BYTES, services.settings.max_body_bytes)
    bad_line = text.count("\n")
    path = tmp_path / "people.csv"
    path.write_text(text, encoding="utf-8")
    # WHEN it is imported by the list's name
    result = remote(cli, api_url, "contacts", "import", str(path), "--list", name, code=1)
    # THEN every good row is in the store, and the bad one is reported at its line in the file
    assert f"imported 41 row(s) into {name} ({list_id}); 1 failed" in result.output
    assert f"line {bad_line}: " in result.output and "line 1:" not in result.output
    assert services.contacts.get(f"p39-{unique}@example.com").attributes["notes"] == notes
    assert services.contacts.get(f"multi-{unique}@example.com").attributes["notes"] == "first line\nsecond line"
    members = services.contacts.list_members(list_id, limit=100).members
    assert len(members) == 41


def test_remote_contacts_and_every_refusal_as_one_line(cli: CliRunner, api_url: str, api: Client,
                                                       services: Services, unique: str) -> None:
    email = f"remote-contact-{unique}@example.com"
    api.upsert_contact(email, name="Ada", attributes={"plan": "pro"})
    got = json.loads(remote(cli, api_url, "contacts", "get", email).output)
    assert got["name"] == "Ada" and got["attributes"] == {"plan": "pro"}
    exported = json.loads(remote(cli, api_url, "contacts", "export", email).output)
    assert exported["contact"]["email"] == email
    assert "erased" in remote(cli, api_url, "contacts", "erase", email, "--yes").output
    with pytest.raises(ContactNotFound):
        services.contacts.get(email)
    missing = remote(cli, api_url, "contacts", "get", email, code=1)
    assert "404" in missing.output
    # refusals: a wrong key, a key without the admin scope, an invalid address, nothing listening
    _, send_only = services.api_keys.create(f"remote-send-{unique}", scopes=["send"])
    wrong = cli.invoke(main, ["lists", "list", "--api-url", api_url], env={"JETMAIL_API_KEY": "jm_wrong"})
    assert wrong.exit_code == 1 and "401" in wrong.output and "JETMAIL_API_KEY" in wrong.output
    scoped = cli.invoke(main, ["lists", "list", "--api-url", api_url], env={"JETMAIL_API_KEY": send_only})
    assert scoped.exit_code == 1 and "403" in scoped.output and "admin" in scoped.output
    invalid = remote(cli, api_url, "contacts", "export", "not-an-address", code=1)
    assert "422" in invalid.output
    down = remote(cli, f"http://127.0.0.1:{free_port()}", "lists", "create", "x", code=1)
    assert "did not answer" in down.output
    for result in (wrong, scoped, invalid, down):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_remote_campaign_report_and_failures_match_the_local_ones(cli: CliRunner, api_url: str, api: Client,
                                                                  app_env: dict[str, str], services: Services,
                                                                  email_worker: subprocess.Popen[bytes],
                                                                  mailbox: Mailbox, unique: str) -> None:
    # GIVEN a campaign sent to one address the sink takes and one it refuses with 550
    good, refused = f"ok-{unique}@remote.example.com", f"reject-{unique}@remote.example.com"
    list_id = api.create_list(f"remote-cmp-{unique}")["id"]
    api.import_contacts(list_id, f"email\n{good}\n{refused}\n".encode())
    campaign_id = api.create_campaign({"name": f"remote-{unique}", "template": "getting_started",
                                       "context": CONTEXT, "audience": [{"list_id": list_id}]})["id"]
    api.send_campaign(campaign_id)

    def finished() -> bool:
        tick(services)
        return bool(api.get_campaign(campaign_id)["state"] == "sent")

    wait_until(finished, timeout=60, what=f"campaign {campaign_id} sent")
    wait_until(lambda: bool(mailbox.for_recipient(good)), timeout=15, what="the good address's mail")
    # WHEN its failures and report are read through the API
    failures = remote(cli, api_url, "campaign", "failures", campaign_id, "--csv").output
    report = remote(cli, api_url, "campaign", "report", campaign_id, "--json").output
    # THEN they name the refused recipient, and say what the same commands say locally
    rows = failures.splitlines()
    assert rows[0].startswith("email,reason") and len(rows) == 2
    assert rows[1].startswith(f"{refused},") and " 550 " in rows[1]
    assert json.loads(report)["counts"]["failed"] == 1
    assert failures == local(cli, app_env, "campaign", "failures", campaign_id, "--csv").output
    assert report == local(cli, app_env, "campaign", "report", campaign_id, "--json").output
    text = remote(cli, api_url, "campaign", "report", campaign_id).output
    assert text == local(cli, app_env, "campaign", "report", campaign_id).output
    missing = remote(cli, api_url, "campaign", "failures", "cmp_doesnotexist", code=1)
    assert "404" in missing.output
