"""Campaigns against the real stack: API → plan job → batch jobs in a worker process → SMTP sink."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.campaigns.model import ABTest, Variant
from jetmail.campaigns.planner import ab_assignment
from jetmail.campaigns.service import z_test
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from jetmail.queue import NotFoundError
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import Isolated, settle

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # tens of thousands of contacts would slow the shared emulator for every other test
    own = Isolated(stack, tmp_path_factory.mktemp("campaigns"))
    own.start_worker()
    yield own
    own.close()


@pytest.fixture(scope="module")
def services(isolated: Isolated) -> Services:
    return isolated.services


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def make_list(client: TestClient, name: str, rows: list[dict[str, Any]]) -> str:
    list_id = client.post("/v1/lists", json={"name": name}).json()["id"]
    for offset in range(0, len(rows), 2000):
        body = "\n".join(json.dumps(r) for r in rows[offset:offset + 2000]).encode()
        resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["failed"] == 0, resp.json()
    return str(list_id)


def new_campaign(client: TestClient, body: dict[str, Any]) -> str:
    resp = client.post("/v1/campaigns", json={"template": "getting_started", "context": CONTEXT, **body})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def campaign(client: TestClient, campaign_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/campaigns/{campaign_id}").json())




def finish(services: Services, client: TestClient, campaign_id: str, *, timeout: float = 120) -> dict[str, Any]:
    def done() -> bool:
        tick(services)
        return campaign(client, campaign_id)["state"] == "sent"

    try:
        wait_until(done, timeout=timeout, what=f"campaign {campaign_id} sent")
    except Exception as exc:
        item = services.campaign_store.get(campaign_id)
        state = {k: item.get(k) for k in ("state", "total", "sent", "failed", "skipped", "batches_done",
                                          "batches_planned", "runs_planned", "runs_expected")}
        raise AssertionError(f"campaign not finished: {state}") from exc
    return campaign(client, campaign_id)


def test_ten_thousand_contacts_each_mailed_exactly_once(client: TestClient, services: Services, mailbox: Mailbox,
                                                        unique: str) -> None:
    # GIVEN 10,000 contacts, some unsubscribed from the list, some suppressed, half of them "pro"
    domain = f"c{unique}.example.com"
    rows = [{"email": f"u{i}@{domain}", "name": f"User {i}", "attributes": {"plan": "pro" if i % 2 else "free"}}
            for i in range(10_000)]
    list_id = make_list(client, f"all-{unique}", rows)
    unsubscribed = {f"u{i}@{domain}" for i in range(0, 10_000, 200)}
    for email in unsubscribed:
        assert client.put(f"/v1/contacts/{email}", json={"lists": {list_id: "unsubscribed"}}).status_code == 200
    suppressed = {f"u{i}@{domain}" for i in range(1, 10_000, 250)}
    for email in suppressed:
        services.suppressions.add(email, reason="hard_bounce", source="test")
    # and a segment of the pro contacts of the same list (everyone in it is also in the list)
    segment = client.post("/v1/segments", json={"name": f"pro-{unique}", "list_ids": [list_id],
                                                "criteria": {"field": "attributes.plan", "op": "eq", "value": "pro"}})
    assert segment.status_code == 201, segment.text
    # WHEN a campaign to the segment (high priority) and the list is sent
    campaign_id = new_campaign(client, {"name": "big", "audience": [
        {"segment_id": segment.json()["id"], "priority": "high"}, {"list_id": list_id}]})
    assert client.post(f"/v1/campaigns/{campaign_id}/send").json()["state"] == "sending"
    eligible = {r["email"] for r in rows} - unsubscribed - suppressed
    wait_until(lambda: sum(1 for r in mailbox.by_recipient() if r.endswith(domain)) >= len(eligible),
               timeout=240, what="every eligible contact mailed")
    # THEN every eligible contact got exactly one email and nobody else got any
    received = {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}
    assert set(received) == eligible
    assert set(received.values()) == {1}
    result = finish(services, client, campaign_id)
    assert result["progress"]["sent"] == len(eligible)
    assert result["progress"]["failed"] == 0


def test_plan_run_twice_still_mails_once(client: TestClient, services: Services, mailbox: Mailbox,
                                         unique: str) -> None:
    domain = f"p{unique}.example.com"
    list_id = make_list(client, f"twice-{unique}", [{"email": f"x{i}@{domain}"} for i in range(500)])
    campaign_id = new_campaign(client, {"name": "twice", "audience": [{"list_id": list_id}]})
    client.post(f"/v1/campaigns/{campaign_id}/send")
    # a second plan job for the same run, as a crash-and-retry or a duplicate trigger would cause
    services.queue.enqueue("campaign_plan", queue="email_campaign", job_id=f"plan-again-{unique}",
                           campaign_id=campaign_id, run="main", winner=None)
    finish(services, client, campaign_id)
    received = {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}
    assert len(received) == 500 and set(received.values()) == {1}
    assert campaign(client, campaign_id)["progress"]["total"] == 500


def test_pause_stops_within_seconds_and_resume_completes_without_duplicates(
        client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    domain = f"z{unique}.example.com"
    list_id = make_list(client, f"pause-{unique}", [{"email": f"y{i}@{domain}"} for i in range(4000)])
    campaign_id = new_campaign(client, {"name": "pausable", "audience": [{"list_id": list_id}]})

    def count() -> int:
        return sum(n for r, n in mailbox.by_recipient().items() if r.endswith(domain))

    client.post(f"/v1/campaigns/{campaign_id}/send")
    wait_until(lambda: count() >= 200, timeout=60, what="sending under way")
    paused_at = time.monotonic()
    assert client.post(f"/v1/campaigns/{campaign_id}/pause").json()["state"] == "paused"
    stopped = settle(count, quiet=1.0)
    assert time.monotonic() - paused_at < 5  # stopped (and stayed stopped) within seconds
    assert stopped < 4000
    # the parked batches (their recipients' addresses) expire like message records if never resumed
    wait_until(lambda: bool(services.campaign_store.parked(campaign_id)), timeout=30, what="parked batches")
    retention = services.settings.message_retention_days * 86_400
    assert all(abs(int(p["expires_at"]) - time.time() - retention) < 600
               for p in services.campaign_store.parked(campaign_id))
    assert client.post(f"/v1/campaigns/{campaign_id}/resume").json()["state"] == "sending"
    wait_until(lambda: count() >= 4000, timeout=120, what="the rest after resume")
    received = {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}
    assert len(received) == 4000 and set(received.values()) == {1}
    assert finish(services, client, campaign_id)["progress"]["sent"] == 4000


def test_cancel_stops_sending(client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    domain = f"k{unique}.example.com"
    list_id = make_list(client, f"cancel-{unique}", [{"email": f"w{i}@{domain}"} for i in range(4000)])
    campaign_id = new_campaign(client, {"name": "cancellable", "audience": [{"list_id": list_id}]})

    def count() -> int:
        return sum(n for r, n in mailbox.by_recipient().items() if r.endswith(domain))

    client.post(f"/v1/campaigns/{campaign_id}/send")
    wait_until(lambda: count() >= 200, timeout=60, what="sending under way")
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel").json()["state"] == "cancelled"
    assert settle(count, quiet=1.0) < 4000
    assert client.post(f"/v1/campaigns/{campaign_id}/resume").status_code == 409


def test_scheduled_campaign_starts_at_its_time(client: TestClient, services: Services, mailbox: Mailbox,
                                               unique: str) -> None:
    domain = f"s{unique}.example.com"
    list_id = make_list(client, f"sched-{unique}", [{"email": f"v{i}@{domain}"} for i in range(20)])
    campaign_id = new_campaign(client, {"name": "later", "audience": [{"list_id": list_id}]})
    at = datetime.now(UTC) + timedelta(seconds=2)
    resp = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"at": at.isoformat()})
    assert resp.json()["state"] == "scheduled"
    wait_until(lambda: sum(1 for r in mailbox.by_recipient() if r.endswith(domain)) == 20, timeout=30,
               what="scheduled campaign")
    first = min(e.received_at for e in mailbox.entries() if any(r.endswith(domain) for r in e.rcpt_tos))
    assert first >= at.timestamp() - 0.05
    # the scheduler tick coming second does not start it again
    assert campaign_id not in tick(services)["started"]


def test_recurring_campaign_fires_on_its_cron(client: TestClient, services: Services, mailbox: Mailbox,
                                              unique: str) -> None:
    domain = f"r{unique}.example.com"
    list_id = make_list(client, f"cron-{unique}", [{"email": f"t{i}@{domain}"} for i in range(3)])
    campaign_id = new_campaign(client, {"name": "every second second", "audience": [{"list_id": list_id}]})
    resp = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"cron": "*/2 * * * * *"})
    assert resp.status_code == 200, resp.text
    # each firing is a run of its own: the three contacts get one email per run

    def runs() -> list[dict[str, Any]]:
        return [c for c in client.get("/v1/campaigns").json()["data"] if c.get("parent_id") == campaign_id]

    def mailed_twice() -> bool:
        counts = [n for r, n in mailbox.by_recipient().items() if r.endswith(domain)]
        return len(counts) == 3 and min(counts) >= 2

    wait_until(lambda: len(runs()) >= 2 and mailed_twice(), timeout=40, what="two firings")
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel").json()["state"] == "cancelled"
    # cancelling removed the native recurring schedule
    with pytest.raises(NotFoundError):
        services.queue.get_schedule(f"cmp-{campaign_id}")


def test_bad_campaigns_get_clear_errors(client: TestClient) -> None:
    missing = client.post("/v1/campaigns", json={"name": "x", "template": "nope", "audience": [{"list_id": "l"}]})
    assert missing.status_code == 404
    no_audience = client.post("/v1/campaigns", json={"name": "x", "template": "welcome", "audience": []})
    assert no_audience.status_code == 422
    both = client.post("/v1/campaigns", json={"name": "x", "template": "welcome",
                                              "audience": [{"list_id": "a", "segment_id": "b"}]})
    assert both.status_code == 422
    unknown_list = client.post("/v1/campaigns", json={"name": "x", "template": "welcome",
                                                      "audience": [{"list_id": "does-not-exist"}]})
    assert unknown_list.status_code == 422
    bad_cron = client.post("/v1/campaigns/cmp_x/schedule", json={"cron": "every day"})
    assert bad_cron.status_code == 422
    assert client.post("/v1/campaigns/cmp_missing/send").status_code == 404


def test_ab_split_is_reproducible_and_matches_the_percentage() -> None:
    test = ABTest(variants=[Variant(name="A"), Variant(name="B"), Variant(name="C")], test_percentage=30, seed=7)
    emails = [f"user{i}@example.com" for i in range(30_000)]
    assigned = [ab_assignment(test, e) for e in emails]
    assert assigned == [ab_assignment(test, e) for e in emails]  # seeded: the same every time
    in_test = [a for a in assigned if a is not None]
    assert abs(len(in_test) - 9_000) < 3 * (30_000 * 0.3 * 0.7) ** 0.5
    for name in "ABC":
        assert abs(in_test.count(name) - len(in_test) / 3) < 3 * (len(in_test) * (1 / 3) * (2 / 3)) ** 0.5
    other_seed = ABTest(variants=test.variants, test_percentage=30, seed=8)
    assert [ab_assignment(other_seed, e) for e in emails[:200]] != assigned[:200]


def test_z_test_p_values() -> None:
    assert z_test(80, 200, 40, 200) < 0.001
    assert z_test(42, 200, 40, 200) > 0.5
    assert z_test(0, 0, 1, 10) == 1.0


def ab_campaign(client: TestClient, unique: str, domain: str, *, fallback: str) -> tuple[str, int]:
    rows = [{"email": f"ab{i}@{domain}"} for i in range(1000)]
    list_id = make_list(client, f"ab-{unique}", rows)
    campaign_id = new_campaign(client, {"name": "subject test", "audience": [{"list_id": list_id}], "ab_test": {
        "variants": [{"name": "A", "subject": "Variant A subject"}, {"name": "B", "subject": "Variant B subject"}],
        "test_percentage": 20, "metric": "open_rate", "test_duration": 1, "fallback": fallback, "seed": 1}})
    client.post(f"/v1/campaigns/{campaign_id}/send")
    test_size = sum(1 for r in rows if ab_assignment(ABTest(
        variants=[Variant(name="A"), Variant(name="B")], test_percentage=20, seed=1), r["email"]) is not None)
    return campaign_id, test_size


def subjects_for(mailbox: Mailbox, domain: str) -> list[str]:
    return [str(mailbox.message(e.id)["Subject"]) for e in mailbox.entries()
            if any(r.endswith(domain) for r in e.rcpt_tos)]


def test_ab_winner_is_chosen_on_engagement_and_sent_to_the_rest(client: TestClient, services: Services,
                                                                mailbox: Mailbox, unique: str) -> None:
    domain = f"ab{unique}.example.com"
    campaign_id, test_size = ab_campaign(client, unique, domain, fallback="manual")
    # the test share goes out, split between the variants
    wait_until(lambda: len(subjects_for(mailbox, domain)) >= test_size, timeout=60, what="test sends")
    sent = subjects_for(mailbox, domain)
    assert len(sent) == test_size and 150 < test_size < 250
    a_sent = sent.count("Variant A subject")
    assert abs(a_sent - test_size / 2) < 3 * (test_size / 4) ** 0.5
    # GIVEN engagement where B clearly wins
    variants = services.campaign_store.variant_counters(campaign_id)
    wait_until(lambda: sum(int(v.get("sent", 0)) for v in services.campaign_store.variant_counters(
        campaign_id).values()) == test_size, timeout=30, what="variant counters")
    variants = services.campaign_store.variant_counters(campaign_id)
    services.campaign_store.add_variant_engagement(campaign_id, "A", opened=int(variants["A"]["sent"]) // 10)
    services.campaign_store.add_variant_engagement(campaign_id, "B", opened=int(variants["B"]["sent"]) // 2)
    # WHEN the test duration is over and the tick runs
    summary = tick(services, datetime.now(UTC) + timedelta(seconds=5))
    assert summary["ab_decided"][campaign_id] == "winner B"
    ab = campaign(client, campaign_id)["ab"]
    assert ab["winner"] == "B" and ab["decided_by"] == "test" and ab["p_value"] < 0.05
    # THEN the rest of the audience gets variant B, everybody once
    wait_until(lambda: len(subjects_for(mailbox, domain)) >= 1000, timeout=60, what="winner sends")
    sent = subjects_for(mailbox, domain)
    assert len(sent) == 1000
    assert sent.count("Variant B subject") == 1000 - a_sent
    assert finish(services, client, campaign_id)["progress"]["sent"] == 1000


def test_ab_without_significance_waits_for_a_manual_pick(client: TestClient, services: Services,
                                                         mailbox: Mailbox, unique: str) -> None:
    domain = f"ac{unique}.example.com"
    campaign_id, test_size = ab_campaign(client, unique, domain, fallback="manual")
    wait_until(lambda: sum(int(v.get("sent", 0)) for v in services.campaign_store.variant_counters(
        campaign_id).values()) == test_size, timeout=60, what="test sends recorded")
    variants = services.campaign_store.variant_counters(campaign_id)
    for name in "AB":
        services.campaign_store.add_variant_engagement(campaign_id, name, opened=int(variants[name]["sent"]) // 4)
    summary = tick(services, datetime.now(UTC) + timedelta(seconds=5))
    assert summary["ab_decided"][campaign_id] == "waiting for a manual pick"
    assert campaign(client, campaign_id)["ab"]["state"] == "waiting"
    assert len(subjects_for(mailbox, domain)) == test_size  # nobody else mailed yet
    picked = client.post(f"/v1/campaigns/{campaign_id}/ab/winner", json={"variant": "A"})
    assert picked.status_code == 200 and picked.json()["ab"]["winner"] == "A"
    assert client.post(f"/v1/campaigns/{campaign_id}/ab/winner", json={"variant": "B"}).status_code == 409
    wait_until(lambda: len(subjects_for(mailbox, domain)) >= 1000, timeout=60, what="manual winner sends")
    assert len(set(e for e in mailbox.by_recipient() if e.endswith(domain))) == 1000
