"""Moving a scheduled campaign, and pausing, resuming and re-timing a recurring one, on the real stack."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import api_client, settle

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def new_campaign(client: TestClient, name: str, emails: list[str]) -> str:
    list_id = client.post("/v1/lists", json={"name": name}).json()["id"]
    body = "\n".join(json.dumps({"email": e}) for e in emails).encode()
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body).json()["failed"] == 0
    resp = client.post("/v1/campaigns", json={"name": name, "template": "getting_started", "context": CONTEXT,
                                              "audience": [{"list_id": list_id}]})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])




def test_a_moved_campaign_starts_once_at_its_new_time(client: TestClient, services: Services, mailbox: Mailbox,
                                                      unique: str) -> None:
    # GIVEN a campaign scheduled 2 s from now
    domain = f"move{unique}.example.com"
    campaign_id = new_campaign(client, f"move-{unique}", [f"m{i}@{domain}" for i in range(5)])
    first_at = datetime.now(UTC) + timedelta(seconds=2)
    assert client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"at": first_at.isoformat()}).status_code == 200
    # WHEN it is moved 4 s later, before the first time comes
    new_at = first_at + timedelta(seconds=4)
    moved = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"at": new_at.isoformat()})
    assert moved.status_code == 200, moved.text
    assert moved.json()["state"] == "scheduled"

    def arrivals() -> list[float]:
        return [e.received_at for e in mailbox.entries() if any(r.endswith(domain) for r in e.rcpt_tos)]

    # THEN nothing leaves at the old time: the first mail arrives at the new time, each contact gets one
    wait_until(lambda: len(arrivals()) >= 5, timeout=30, what="the moved campaign")
    assert min(arrivals()) >= new_at.timestamp() - 0.05
    assert settle(lambda: len(arrivals()), quiet=1.0, timeout=30) == 5
    assert set(mailbox.by_recipient()[f"m{i}@{domain}"] for i in range(5)) == {1}
    # AND the scheduler's safety net does not start it a second time
    assert campaign_id not in tick(services)["started"]
    assert moved.json()["next_run_at"] == new_at.isoformat()


def test_a_recurring_campaign_pauses_resumes_and_takes_a_new_cron(client: TestClient, services: Services,
                                                                   mailbox: Mailbox, unique: str) -> None:
    domain = f"rec{unique}.example.com"
    campaign_id = new_campaign(client, f"recur-{unique}", [f"r{i}@{domain}" for i in range(2)])

    def runs() -> int:
        return sum(1 for c in client.get("/v1/campaigns").json()["data"] if c.get("parent_id") == campaign_id)

    # GIVEN a campaign firing every second second, whose next firing the API shows
    before = datetime.now(UTC)
    resp = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"cron": "*/2 * * * * *"})
    after = datetime.now(UTC)
    assert resp.status_code == 200, resp.text
    next_run = datetime.fromisoformat(resp.json()["next_run_at"])
    # the even second after the moment the server took the request, somewhere between before and after
    assert before < next_run <= after + timedelta(seconds=2)
    wait_until(lambda: runs() >= 1, timeout=20, what="a first firing")
    # WHEN it is paused, it stops firing (no next run shown) and its native schedule is paused
    paused = client.post(f"/v1/campaigns/{campaign_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused" and paused.json()["next_run_at"] is None
    assert services.queue.get_schedule(f"cmp-{campaign_id}").paused is True
    while_paused = settle(runs, quiet=4.5, timeout=30)
    # WHEN it is resumed, it fires again
    resumed = client.post(f"/v1/campaigns/{campaign_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "scheduled"
    wait_until(lambda: runs() > while_paused, timeout=20, what="a firing after resume")
    # WHEN it gets a new cron and time zone: 09:30 on the first of the month, Berlin time
    changed = client.post(f"/v1/campaigns/{campaign_id}/schedule",
                          json={"cron": "30 9 1 * *", "timezone": "Europe/Berlin"})
    assert changed.status_code == 200, changed.text
    shown = changed.json()
    assert shown["cron"] == "30 9 1 * *" and shown["timezone"] == "Europe/Berlin"
    local = datetime.fromisoformat(shown["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.day, local.hour, local.minute, local.second) == (1, 9, 30, 0)
    assert datetime.now(UTC) < local <= datetime.now(UTC) + timedelta(days=32)
    schedule = services.queue.get_schedule(f"cmp-{campaign_id}")
    assert schedule.cron == "0 30 9 1 * *" and schedule.timezone == "Europe/Berlin" and not schedule.paused
    # THEN the every-two-seconds firing is gone
    settle(runs, quiet=4.5, timeout=30)
    # AND a paused recurring campaign takes a new cron but stays paused until resumed
    assert client.post(f"/v1/campaigns/{campaign_id}/pause").json()["state"] == "paused"
    still = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"cron": "0 8 * * 1"})
    assert still.status_code == 200 and still.json()["state"] == "paused"
    assert services.queue.get_schedule(f"cmp-{campaign_id}").paused is True
    # AND a one-off time is refused for a recurring campaign, with a reason
    refused = client.post(f"/v1/campaigns/{campaign_id}/schedule",
                          json={"at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert refused.status_code == 409 and "cron" in refused.text
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel").json()["state"] == "cancelled"


def test_next_run_of_a_one_off_schedule_is_its_time(client: TestClient, unique: str) -> None:
    campaign_id = new_campaign(client, f"later-{unique}", [f"l@later{unique}.example.com"])
    at = datetime.now(UTC) + timedelta(days=3)
    shown: dict[str, Any] = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"at": at.isoformat()}).json()
    assert shown["next_run_at"] == at.isoformat()
    assert client.get(f"/v1/campaigns/{campaign_id}").json()["next_run_at"] == at.isoformat()
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel").json()["next_run_at"] is None
