"""Permanent campaign failures end to end: a campaign sent by the real worker to addresses the SMTP sink
answers with 550, then each failed recipient and its reason through the API (paged), the CLI and the
dashboard, and the batch items that hold them."""

from __future__ import annotations

import base64
import csv
import html
import importlib
import io
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.campaigns.ids import campaign_message_id
from jetmail.campaigns.model import BatchCounts
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.scheduler import tick
from jetmail.services import Services

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def app(services: Services) -> FastAPI:
    return create_app(services.settings, services=services)


@pytest.fixture(scope="module")
def client(app: FastAPI, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {api_token}"}, follow_redirects=False) as c:
        yield c


def make_list(client: TestClient, name: str, emails: list[str]) -> str:
    list_id = client.post("/v1/lists", json={"name": name}).json()["id"]
    body = "\n".join(json.dumps({"email": e}) for e in emails).encode()
    resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body)
    assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
    return str(list_id)


def send_and_finish(client: TestClient, services: Services, name: str, audience: list[dict[str, Any]]) -> str:
    created = client.post("/v1/campaigns", json={"name": name, "template": "getting_started", "context": CONTEXT,
                                                 "audience": audience})
    assert created.status_code == 201, created.text
    campaign_id = str(created.json()["id"])
    assert client.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

    def finished() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(finished, timeout=90, what=f"campaign {campaign_id} sent")
    return campaign_id


@pytest.fixture(scope="module")
def failed_campaign(client: TestClient, services: Services, mailbox: Mailbox) -> dict[str, Any]:
    """Three lists, one batch each (batches never mix sources): the first and the last hold addresses the
    sink refuses with 550, the middle one only good addresses."""
    tag = uuid.uuid4().hex[:10]
    domain = f"f{tag}.example.com"
    first = [f"ok-a{i}@{domain}" for i in range(3)] + [f"reject-a{i}@{domain}" for i in range(2)]
    middle = [f"ok-b{i}@{domain}" for i in range(3)]
    last = [f"ok-c{i}@{domain}" for i in range(2)] + [f"reject-c0@{domain}"]
    audience = [{"list_id": make_list(client, f"failures-1-{tag}", first), "priority": "high"},
                {"list_id": make_list(client, f"failures-2-{tag}", middle), "priority": "normal"},
                {"list_id": make_list(client, f"failures-3-{tag}", last), "priority": "low"}]
    campaign_id = send_and_finish(client, services, "Failures", audience)
    good = [e for e in first + middle + last if not e.startswith("reject-")]
    wait_until(lambda: all(mailbox.for_recipient(e) for e in good), timeout=15, what="good mail in the sink")
    rejected = [e for e in first + last if e.startswith("reject-")]
    return {"id": campaign_id, "rejected": rejected, "good": good}


def all_pages(client: TestClient, campaign_id: str, *, limit: int) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        resp = client.get(f"/v1/campaigns/{campaign_id}/failures", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        assert len(body["data"]) <= limit
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows, pages
        assert pages < 20, "the cursor never ran out"


# ---- API
def test_failures_route_lists_exactly_the_refused_recipients(client: TestClient, services: Services,
                                                            failed_campaign: dict[str, Any]) -> None:
    campaign_id = failed_campaign["id"]
    # GIVEN a finished campaign whose counter says three recipients failed
    assert client.get(f"/v1/campaigns/{campaign_id}").json()["progress"]["failed"] == 3
    # WHEN the failures are listed
    resp = client.get(f"/v1/campaigns/{campaign_id}/failures")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # THEN exactly the refused recipients are there, once each, with the sink's 550 as the reason
    assert body["next_cursor"] is None
    rows = body["data"]
    assert sorted(r["email"] for r in rows) == sorted(failed_campaign["rejected"])
    assert all("550" in r["reason"] and "mailbox unavailable" in r["reason"] for r in rows), rows
    # AND each row names its batch item, position and message id, in batch then position order
    assert [(r["run"], r["batch"]) for r in rows] == [("main", 1), ("main", 1), ("main", 3)]
    for row in rows:
        item = services.campaign_store.batch(campaign_id, run=row["run"], batch=row["batch"])
        assert item is not None and item["recipients"][row["position"]] == row["email"]
        assert row["message_id"] == campaign_message_id(campaign_id, row["run"], row["batch"], row["position"])
        assert row["at"].startswith("20")
    assert rows[0]["position"] < rows[1]["position"]


def test_only_batches_with_failures_hold_them_and_a_second_record_changes_nothing(
        services: Services, failed_campaign: dict[str, Any]) -> None:
    store = services.campaign_store
    campaign_id = failed_campaign["id"]
    # GIVEN the three batch items of the campaign
    first, middle, last = (store.batch(campaign_id, run="main", batch=n) for n in (1, 2, 3))
    assert first is not None and middle is not None and last is not None
    # THEN the batch without failures paid no write for them, the others hold one entry per failure
    assert "failures" not in middle
    assert len(first["failures"]) == 2 and len(last["failures"]) == 1
    # WHEN a redelivered batch records its outcome again (with other words for its failures)
    before = store.get(campaign_id, consistent=True)
    positions = {int(p): "later words" for p in first["failures"]}
    recorded = store.finish_batch(campaign_id, run="main", batch=1, counts=BatchCounts(sent=98, failed=2),
                                  failures=positions)
    # THEN nothing is counted again and the first record of the failures stands
    assert recorded is False
    after = store.get(campaign_id, consistent=True)
    assert (after["sent"], after["failed"], after["batches_done"]) == (
        before["sent"], before["failed"], before["batches_done"])
    again = store.batch(campaign_id, run="main", batch=1)
    assert again is not None and again["failures"] == first["failures"]


def test_batch_items_holding_addresses_expire_with_the_message_retention(
        services: Services, failed_campaign: dict[str, Any]) -> None:
    # the addresses (and failure reasons) on planned batches are kept no longer than message records
    retention = services.settings.message_retention_days * 86_400
    for n in (1, 2, 3):
        item = services.campaign_store.batch(failed_campaign["id"], run="main", batch=n)
        assert item is not None
        assert abs(int(item["expires_at"]) - (time.time() + retention)) < 600


def test_pages_of_one_walk_every_failure_once(client: TestClient, failed_campaign: dict[str, Any]) -> None:
    campaign_id = failed_campaign["id"]
    everything = client.get(f"/v1/campaigns/{campaign_id}/failures").json()["data"]
    # WHEN the failures are read one, then two, at a time
    ones, pages = all_pages(client, campaign_id, limit=1)
    twos, two_pages = all_pages(client, campaign_id, limit=2)
    # THEN every failure comes once, in the same order, across pages that stop inside and between batches,
    # and the last page says it is the last
    assert ones == everything and twos == everything
    assert pages == 3 and two_pages == 2


def test_a_page_cut_short_by_its_query_cap_carries_on_after_the_last_batch_read(
        services: Services, client: TestClient, failed_campaign: dict[str, Any]) -> None:
    store = services.campaign_store
    campaign_id = failed_campaign["id"]
    everything = client.get(f"/v1/campaigns/{campaign_id}/failures").json()["data"]
    # GIVEN a cursor inside the first batch
    first = store.failures(campaign_id, limit=1)
    assert first.next_cursor is not None
    # WHEN the next page may make no Query (as when its query cap is spent on batches without failures)
    capped = store.failures(campaign_id, limit=5, cursor=first.next_cursor, max_queries=0)
    # THEN it returns the rest of that batch and a cursor past it, which leads to the remaining failures
    assert [f.model_dump() for f in capped.failures] == everything[1:2]
    assert capped.next_cursor is not None
    rest = store.failures(campaign_id, limit=5, cursor=capped.next_cursor)
    assert [f.model_dump() for f in rest.failures] == everything[2:] and rest.next_cursor is None


def test_bad_requests_get_clear_errors(client: TestClient, app: FastAPI, services: Services,
                                       failed_campaign: dict[str, Any]) -> None:
    campaign_id = failed_campaign["id"]
    url = f"/v1/campaigns/{campaign_id}/failures"
    # an unknown campaign: 404
    missing = client.get("/v1/campaigns/cmp_nope/failures")
    assert missing.status_code == 404 and "cmp_nope" in missing.json()["detail"]
    # a cursor that is not one the API returned, or one of another campaign: 422 saying so
    other = base64.urlsafe_b64encode(json.dumps({"c": "cmp_other", "b": "BATCH#main#000001", "p": 0}).encode())
    forged = base64.urlsafe_b64encode(json.dumps({"c": campaign_id, "b": "META", "p": 0}).encode())
    for cursor, words in (("not-a-cursor!", "cursor"), ("e30", "cursor"), (other.decode(), "this campaign"),
                          (forged.decode(), "cursor"), ("x" * 2000, "cursor"), ("é€", "cursor"),
                          ("W1tbW1tbW1tbXV1dXV1dXV1d", "cursor")):
        resp = client.get(url, params={"cursor": cursor})
        assert resp.status_code == 422, (cursor, resp.text)
        assert words in json.dumps(resp.json()["detail"]), resp.text
    # a limit out of range or not a number: 422 naming the field
    for limit in ("0", "501", "many"):
        resp = client.get(url, params={"limit": limit})
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "limit", resp.text
    # no key: 401; a key without the admin scope: 403
    with TestClient(app) as anonymous:
        assert anonymous.get(url).status_code == 401
    _, send_token = services.api_keys.create("failures-send-only", scopes=["send"])
    with TestClient(app, headers={"Authorization": f"Bearer {send_token}"}) as sender:
        assert sender.get(url).status_code == 403


# ---- CLI
def cli(app_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jetmail.cli", "campaign", "failures", *args], env=app_env,
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_the_failures(app_env: dict[str, str], failed_campaign: dict[str, Any]) -> None:
    campaign_id = failed_campaign["id"]
    # WHEN an operator runs `jetmail campaign failures ID`
    run = cli(app_env, campaign_id)
    # THEN one line per refused recipient, with the reason
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(failed_campaign["rejected"])
    assert all("550" in line for line in lines)
    # AND --csv gives the same rows with a header, --limit caps them
    rows = list(csv.DictReader(io.StringIO(cli(app_env, campaign_id, "--csv").stdout)))
    assert sorted(r["email"] for r in rows) == sorted(failed_campaign["rejected"])
    assert set(rows[0]) == {"email", "reason", "run", "batch", "position", "message_id", "at"}
    assert all("550" in r["reason"] for r in rows)
    capped = list(csv.DictReader(io.StringIO(cli(app_env, campaign_id, "--csv", "--limit", "2").stdout)))
    assert capped == rows[:2]
    # AND an unknown campaign is one error line
    missing = cli(app_env, "cmp_nope")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: campaign 'cmp_nope' not found"


# ---- dashboard
def logged_in(app: FastAPI, token: str) -> TestClient:
    browser = TestClient(app, base_url="https://testserver", follow_redirects=False)
    form = browser.get("/dashboard/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    resp = browser.post("/dashboard/login", data={"api_key": token, "csrf": csrf.group(1)})
    assert resp.status_code == 303, resp.text
    return browser


def test_dashboard_shows_the_failures(app: FastAPI, api_token: str, client: TestClient, services: Services,
                                      failed_campaign: dict[str, Any], unique: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    browser = logged_in(app, api_token)
    # WHEN the campaign's page is opened
    page = browser.get(f"/dashboard/campaigns/{failed_campaign['id']}")
    # THEN it has a "Permanent failures" table with each refused recipient and the reason
    assert page.status_code == 200, page.text
    section = page.text[page.text.index("Permanent failures"):]
    section = section[:section.index("</section>")]
    for email in failed_campaign["rejected"]:
        assert re.search(rf"<td>{re.escape(email)}</td><td>[^<]*550[^<]*</td>", section), section
    assert not any(email in section for email in failed_campaign["good"])
    assert "More failures" not in section  # three fit on the first page
    # AND a link to more failures that was tampered with is a clear error page, not a crash
    bad = browser.get(f"/dashboard/campaigns/{failed_campaign['id']}", params={"failures": "nope!"})
    assert bad.status_code == 422 and "not valid" in bad.text
    # AND with pages of one, the "More failures" links walk through all of them
    monkeypatch.setattr(importlib.import_module("jetmail.dashboard.router"), "FAILURE_PAGE", 1)
    seen: list[str] = []
    link: str | None = f"/dashboard/campaigns/{failed_campaign['id']}"
    while link is not None:
        assert len(seen) < 5, "the links never ran out"
        text = browser.get(link).text
        seen += [e for e in failed_campaign["rejected"] if f"<td>{e}</td>" in text]
        more = re.search(r'<a href="([^"]+)">More failures</a>', text)
        link = html.unescape(more.group(1)) if more else None
        assert ("First failures" in text) == (len(seen) > 1)
    assert sorted(seen) == sorted(failed_campaign["rejected"])
    # AND a campaign without failures has no such table
    clean_list = make_list(client, f"clean-{unique}", [f"ok@clean{unique}.example.com"])
    clean = send_and_finish(client, services, "Clean", [{"list_id": clean_list}])
    assert "Permanent failures" not in browser.get(f"/dashboard/campaigns/{clean}").text
    assert client.get(f"/v1/campaigns/{clean}/failures").json() == {"data": [], "next_cursor": None}


def test_an_erased_address_is_not_shown_among_the_failures(client: TestClient, services: Services,
                                                           failed_campaign: dict[str, Any]) -> None:
    # (last in this module: it erases one of the shared campaign's rejected recipients)
    # GIVEN one of the refused recipients asks to be erased
    erased = failed_campaign["rejected"][0]
    assert client.delete(f"/v1/contacts/{erased}", params={"erase": "true"}).status_code == 200
    # THEN the failures listing keeps its row and reason but no longer shows the address
    rows = client.get(f"/v1/campaigns/{failed_campaign['id']}/failures").json()["data"]
    assert len(rows) == len(failed_campaign["rejected"])
    assert erased not in {r["email"] for r in rows}
    assert [r["email"] for r in rows].count("(erased)") == 1
    assert {r["email"] for r in rows} - {"(erased)"} == set(failed_campaign["rejected"][1:])
