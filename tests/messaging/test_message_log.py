"""The message log end to end: messages sent through the API to the real worker, then found by recipient, tag,
status and time (paged), followed through their timeline (the SES simulator reports delivery and bounce), a
campaign message resolved by its ``cm_`` id, and the same through the CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from jetmail.devstack.stack import StackState, wait_until
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import api_client, cli_runner, run_cli, stack_env

SIMULATOR = "simulator.amazonses.com"
RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}
CAMPAIGN_CONTEXT = {"steps": [{"title": "One", "description": "First."}],
                    "dashboard_url": "https://app.example.com/", "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def send(client: TestClient, to: str, **extra: Any) -> str:
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET, **extra})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def detail(client: TestClient, message_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/messages/{message_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def events(client: TestClient, message_id: str) -> list[str]:
    return [e["event"] for e in detail(client, message_id)["timeline"]]


def walk(client: TestClient, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every message of a search, following next_cursor; returns them and the pages read."""
    found: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        resp = client.get("/v1/messages", params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        found += body["data"]
        cursor = body["next_cursor"]
        if not cursor:
            return found, pages
        assert pages < 200


@pytest.fixture(scope="module")
def sent(client: TestClient) -> dict[str, Any]:
    """Three messages to one simulator address tagged ``log-<id>`` (two also ``vip-<id>``), one to another
    address with the same tag, and one that bounces; all sent."""
    label = datetime.now(UTC).strftime("%H%M%S%f")
    tag, vip = f"log-{label}", f"vip-{label}"
    to = f"success+log{label}@{SIMULATOR}"
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [send(client, to, tags=[tag, vip], metadata={"order": "1"}),
           send(client, to, tags=[tag, vip], metadata={"order": "2"}),
           send(client, to, tags=[tag], metadata={"order": "3"})]
    other = send(client, f"success+other{label}@{SIMULATOR}", tags=[tag])
    bounced = send(client, f"bounce+log{label}@{SIMULATOR}", tags=[tag])
    for message_id in [*ids, other, bounced]:
        wait_until(lambda m=message_id: "sent" in events(client, m), timeout=30, what=f"{message_id} sent")
    after = datetime.now(UTC) + timedelta(seconds=1)
    return {"tag": tag, "vip": vip, "to": to, "ids": ids, "other": other, "bounced": bounced,
            "since": before.isoformat(), "until": after.isoformat()}


def test_messages_are_found_by_recipient_with_paging(client: TestClient, sent: dict[str, Any]) -> None:
    # WHEN the log is searched by recipient, two per page
    found, pages = walk(client, to=sent["to"].upper(), limit=2)
    # THEN the three messages come newest first, over two pages, with their tags and metadata
    assert [m["id"] for m in found] == list(reversed(sent["ids"]))
    assert pages == 2
    assert found[0]["metadata"] == {"order": "3"} and found[2]["tags"] == [sent["tag"], sent["vip"]]
    # AND the recipient's search narrows by tag and by status on the message itself
    assert [m["id"] for m in walk(client, to=sent["to"], tag=sent["vip"])[0]] == list(reversed(sent["ids"][:2]))
    assert walk(client, to=sent["to"], status="bounced")[0] == []


def test_messages_are_found_by_tag_and_status(client: TestClient, sent: dict[str, Any]) -> None:
    everything = [*sent["ids"], sent["other"], sent["bounced"]]
    # WHEN the log is searched by tag, two per page
    found, pages = walk(client, tag=sent["tag"], limit=2)
    # THEN all five come, newest first, over three pages
    assert [m["id"] for m in found] == list(reversed(everything))
    assert pages == 3
    # AND the bounce, once reported, is found by its status
    wait_until(lambda: [m["id"] for m in walk(client, tag=sent["tag"], status="bounced")[0]] == [sent["bounced"]],
               timeout=30, what="the bounced message by status")


def test_messages_are_found_by_time_range_and_status_alone(client: TestClient, sent: dict[str, Any]) -> None:
    everything = {*sent["ids"], sent["other"], sent["bounced"]}
    # WHEN the log is searched by time alone (the day partitions)
    found, _ = walk(client, since=sent["since"], until=sent["until"], limit=3)
    # THEN every message of the range is there, newest first, and none from outside it
    ids = [m["id"] for m in found]
    assert everything <= set(ids)
    assert all(sent["since"] <= m["created_at"] <= sent["until"] for m in found)
    assert [m["created_at"] for m in found] == sorted((m["created_at"] for m in found), reverse=True)
    # AND a status alone finds the bounce among the range's messages
    wait_until(lambda: sent["bounced"] in {m["id"] for m in walk(client, status="bounced", since=sent["since"])[0]},
               timeout=30, what="bounced by status alone")


def test_the_timeline_shows_sending_delivery_and_bounce(client: TestClient, sent: dict[str, Any]) -> None:
    # WHEN the simulator reports a delivery and a bounce
    wait_until(lambda: "delivered" in events(client, sent["ids"][0]), timeout=30, what="delivered event")
    wait_until(lambda: "bounced" in events(client, sent["bounced"]), timeout=30, what="bounced event")
    # THEN each timeline runs in order from queued to the provider's report
    delivered = detail(client, sent["ids"][0])
    kinds = [e["event"] for e in delivered["timeline"]]
    assert kinds.index("queued") < kinds.index("sending") < kinds.index("sent") < kinds.index("delivered")
    assert [e["at"] for e in delivered["timeline"]] == sorted(e["at"] for e in delivered["timeline"])
    assert delivered["metadata"] == {"order": "1"}
    bounce = next(e for e in detail(client, sent["bounced"])["timeline"] if e["event"] == "bounced")
    assert bounce["detail"] and bounce["source"]


def test_bad_filters_are_refused_with_problems(client: TestClient, sent: dict[str, Any]) -> None:
    for params, field in [({"since": "yesterday"}, "since"), ({"until": "2026-13-40"}, "until"),
                          ({"status": "lost"}, "status"), ({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                          ({"tag": "no spaces"}, "tag")]:
        resp = client.get("/v1/messages", params=params)
        assert resp.status_code == 422, (params, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in resp.json()["errors"]] == [field]
    # a cursor of another search, a made-up cursor, and filters that cannot go together
    cursor = client.get("/v1/messages", params={"tag": sent["tag"], "limit": 1}).json()["next_cursor"]
    for params in [{"tag": sent["vip"], "cursor": cursor}, {"cursor": "bm90IGEgY3Vyc29y"},
                   {"campaign_id": "cmp_x", "tag": sent["tag"]}, {"since": sent["until"], "until": sent["since"]}]:
        resp = client.get("/v1/messages", params=params)
        assert resp.status_code == 422, (params, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/messages/msg_000000000000000000000000000").status_code == 404
    assert client.get("/v1/messages/cm_nope_r1_0_0").status_code == 404


def test_a_campaign_message_resolves_by_its_id(client: TestClient, services: Services) -> None:
    label = datetime.now(UTC).strftime("%H%M%S%f")
    emails = [f"success+cm{label}a@{SIMULATOR}", f"success+cm{label}b@{SIMULATOR}"]
    list_id = client.post("/v1/lists", json={"name": f"log-{label}"}).json()["id"]
    body = "\n".join(json.dumps({"email": e}) for e in emails).encode()
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body).status_code == 200
    created = client.post("/v1/campaigns", json={"name": f"log-{label}", "template": "getting_started",
                                                 "context": CAMPAIGN_CONTEXT, "audience": [{"list_id": list_id}]})
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    # WHEN the campaign is sent
    assert client.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

    def finished() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(finished, timeout=90, what=f"campaign {campaign_id} sent")
    # THEN its messages are listed from its batches, and each resolves through GET /v1/messages/{id}
    found, _ = walk(client, campaign_id=campaign_id, limit=1)
    assert sorted(m["to"] for m in found) == sorted(emails)
    assert {m["status"] for m in found} == {"sent"}
    one = walk(client, campaign_id=campaign_id, to=emails[1])[0]
    assert [m["to"] for m in one] == [emails[1]]
    message = detail(client, one[0]["id"])
    assert message["id"].startswith("cm_") and message["campaign_id"] == campaign_id
    assert message["to"] == emails[1] and message["status"] == "sent"
    assert [e["event"] for e in message["timeline"]][:2] == ["queued", "sent"]
    wait_until(lambda: "delivered" in events(client, one[0]["id"]), timeout=30, what="campaign delivery event")


@pytest.fixture
def cli(stack: StackState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with cli_runner(stack_env(stack), tmp_path, monkeypatch) as runner:
        yield runner




def test_the_cli_lists_and_shows_messages(cli: CliRunner, sent: dict[str, Any]) -> None:
    # WHEN an operator lists a recipient's messages, one a page, then the next page
    first = run_cli(cli, "messages", "list", "--to", sent["to"], "--limit", "1", "--json").output.splitlines()
    assert json.loads(first[0])["id"] == sent["ids"][2]
    cursor = json.loads(first[-1])["next_cursor"]
    second = run_cli(cli, "messages", "list", "--to", sent["to"], "--limit", "1", "--cursor", cursor, "--json")
    assert json.loads(second.output.splitlines()[0])["id"] == sent["ids"][1]
    # AND by tag, as text
    text = run_cli(cli, "messages", "list", "--tag", sent["vip"]).output
    assert sent["ids"][0] in text and sent["ids"][1] in text and sent["ids"][2] not in text
    # THEN one message shows with its timeline
    shown = run_cli(cli, "messages", "show", sent["ids"][0]).output
    assert sent["ids"][0] in shown and "queued" in shown and "sent" in shown and "order" in shown
    # AND bad input is one error line
    assert "error" in run_cli(cli, "messages", "list", "--status", "lost", code=2).output.lower()
    assert "error:" in run_cli(cli, "messages", "show", "msg_000000000000000000000000000", code=1).output
