"""Stop means stop: a suppression, list unsubscribe, complaint or erasure made after a campaign was planned
reaches every batch sent after it, whenever the worker started (real stack, real worker processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.deliverability.events import DeliveryEvent, EventKind
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, stop_process, wait_until
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import Isolated, settle

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("stops"))
    # a send rate low enough that a campaign of a few thousand takes seconds: time to act while it runs
    own.env["JETMAIL_RATE_PER_SECOND"] = "250"
    own.start_worker()
    yield own
    own.close()


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def start_campaign(client: TestClient, domain: str, size: int,
                   extra: list[dict[str, str]] | None = None) -> tuple[str, str]:
    """A campaign to ``size`` new members of a new list (and ``extra`` audience sources); returns its id and the
    list's."""
    list_id = client.post("/v1/lists", json={"name": domain}).json()["id"]
    body = "\n".join(json.dumps({"email": f"r{i}@{domain}"}) for i in range(size)).encode()
    resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body)
    assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
    resp = client.post("/v1/campaigns", json={"name": domain, "template": "getting_started", "context": CONTEXT,
                                              "audience": [{"list_id": list_id}, *(extra or [])]})
    assert resp.status_code == 201, resp.text
    campaign_id = resp.json()["id"]
    assert client.post(f"/v1/campaigns/{campaign_id}/send").json()["state"] == "sending"
    return campaign_id, list_id


def mailed(mailbox: Mailbox, domain: str) -> dict[str, int]:
    return {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}




def finish(services: Services, client: TestClient, campaign_id: str) -> dict[str, Any]:
    def done() -> bool:
        tick(services)
        return client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent"

    wait_until(done, timeout=120, what=f"campaign {campaign_id} sent")
    return dict(client.get(f"/v1/campaigns/{campaign_id}").json())


def cli(isolated: Isolated, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "jetmail.cli", *args], env=isolated.env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def not_mailed(mailbox: Mailbox, domain: str, size: int, n: int) -> list[str]:
    """``n`` recipients of the campaign not mailed yet (the audience streams in key order, not import order)."""
    received = mailed(mailbox, domain)
    return [e for e in (f"r{i}@{domain}" for i in reversed(range(size))) if e not in received][:n]


def restart_worker(isolated: Isolated) -> None:
    assert isolated.worker is not None
    stop_process(isolated.worker.pid)
    isolated.start_worker()


def test_suppressed_and_unsubscribed_during_a_pause_are_not_mailed_after_a_restart_and_resume(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a 2,000-recipient campaign, sent and then paused part-way
    domain = f"sp{unique}.example.com"
    campaign_id, list_id = start_campaign(client, domain, 2000)
    wait_until(lambda: sum(mailed(mailbox, domain).values()) >= 200, timeout=60, what="sending under way")
    assert client.post(f"/v1/campaigns/{campaign_id}/pause").json()["state"] == "paused"
    settle(lambda: sum(mailed(mailbox, domain).values()))
    # two recipients not mailed yet
    complainer, leaver = not_mailed(mailbox, domain, 2000, 2)
    # WHEN, during the pause, one is suppressed for a complaint (CLI) and one unsubscribes from the list (API)
    assert "suppressed" in cli(isolated, "suppressions", "add", complainer, "--reason", "spam_complaint")
    resp = client.put(f"/v1/contacts/{leaver}", json={"lists": {list_id: "unsubscribed"}})
    assert resp.status_code == 200, resp.text
    # and the worker restarts (a deploy) before the campaign is resumed
    restart_worker(isolated)
    assert client.post(f"/v1/campaigns/{campaign_id}/resume").json()["state"] == "sending"
    result = finish(isolated.services, client, campaign_id)
    # THEN neither is mailed, everyone else exactly once, and the campaign counts them as skipped
    received = mailed(mailbox, domain)
    assert complainer not in received and leaver not in received
    assert len(received) == 1998 and set(received.values()) == {1}
    assert (result["progress"]["sent"], result["progress"]["skipped"]) == (1998, 2)


def test_stops_made_while_sending_reach_every_batch_taken_after_them(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a campaign under way to 2,900 recipients of one list (normal priority) and six of another (low
    # priority: their batch is planned last and taken only once no normal batch waits, seconds from now)
    domain = f"sl{unique}.example.com"
    victims = [f"v{i}@{domain}" for i in range(6)]
    late_list = client.post("/v1/lists", json={"name": f"late-{domain}"}).json()["id"]
    body = "\n".join(json.dumps({"email": e}) for e in victims).encode()
    resp = client.post(f"/v1/lists/{late_list}/import", params={"format": "jsonl"}, content=body)
    assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
    campaign_id, _ = start_campaign(client, domain, 2900, extra=[{"list_id": late_list, "priority": "low"}])
    wait_until(lambda: sum(mailed(mailbox, domain).values()) >= 100, timeout=60, what="sending under way")
    # WHEN, while it sends, they are suppressed, unsubscribe from their list, or are suppressed for a complaint
    # (a complaint through SES feedback would also trip the reputation monitor at this volume)
    for i, email in enumerate(victims):
        if i % 3 == 0:
            assert client.post("/v1/suppressions", json={"email": email, "reason": "manual"}).status_code == 201
        elif i % 3 == 1:
            resp = client.put(f"/v1/contacts/{email}", json={"lists": {late_list: "unsubscribed"}})
            assert resp.status_code == 200
        else:
            resp = client.post("/v1/suppressions", json={"email": email, "reason": "spam_complaint"})
            assert resp.status_code == 201
    assert not set(victims) & set(mailed(mailbox, domain)), "the campaign reached them before their stops"
    # THEN none of them is ever mailed: the campaign skipped them, or left them out of its plan when the plan
    # reached them after their stop; everyone else is mailed once
    result = finish(isolated.services, client, campaign_id)
    received = mailed(mailbox, domain)
    assert not set(victims) & set(received)
    assert set(received.values()) == {1}
    progress = result["progress"]
    assert progress["skipped"] + (2906 - progress["total"]) == len(victims)
    assert progress["sent"] == len(received) == 2900


def test_a_worker_started_after_the_stops_honours_them(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a campaign planned and paused part-way, and no worker running
    domain = f"sw{unique}.example.com"
    campaign_id, list_id = start_campaign(client, domain, 2000)
    wait_until(lambda: sum(mailed(mailbox, domain).values()) >= 200, timeout=60, what="sending under way")
    assert client.post(f"/v1/campaigns/{campaign_id}/pause").json()["state"] == "paused"
    settle(lambda: sum(mailed(mailbox, domain).values()))
    assert isolated.worker is not None
    stop_process(isolated.worker.pid)
    erased, bounced, leaver = not_mailed(mailbox, domain, 2000, 3)
    # WHEN one is erased, one hard-bounces (SES feedback) and one unsubscribes from the list
    assert client.delete(f"/v1/contacts/{erased}", params={"erase": "true"}).status_code == 200
    isolated.services.feedback.process(DeliveryEvent(
        kind=EventKind.BOUNCE, recipient=bounced, occurred_at=datetime.now(UTC), event_id=f"b-{bounced}",
        source="ses", bounce_type="Permanent", bounce_subtype="General"))
    assert client.put(f"/v1/contacts/{leaver}", json={"lists": {list_id: "unsubscribed"}}).status_code == 200
    # and only then a worker starts, and the campaign resumes
    isolated.start_worker()
    assert client.post(f"/v1/campaigns/{campaign_id}/resume").json()["state"] == "sending"
    result = finish(isolated.services, client, campaign_id)
    # THEN none of them is mailed
    received = mailed(mailbox, domain)
    assert not {erased, bounced, leaver} & set(received)
    assert len(received) == 1997 and set(received.values()) == {1}
    assert (result["progress"]["sent"], result["progress"]["skipped"]) == (1997, 3)
