"""Bounces, complaints, suppression, tracking and unsubscribe against the real stack."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from stacktools import api_client

WELCOME_CONTEXT = {"login_url": "https://app.example.com/login", "dashboard_url": "https://app.example.com/",
                   "docs_url": "https://docs.example.com/", "steps": [], "tips": [],
                   "blog_url": "https://example.com/blog"}
RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token, follow_redirects=False)


def bounce(email: str, *, kind: str = "Permanent", message_id: str | None = None, n: int = 0,
           at: datetime | None = None) -> DeliveryEvent:
    at = at or datetime.now(UTC)
    return DeliveryEvent(kind=EventKind.BOUNCE, recipient=email, occurred_at=at, message_id=message_id,
                         event_id=event_id("bounce", email, kind, n), bounce_type=kind,  # type: ignore[arg-type]
                         bounce_subtype="General", diagnostic="smtp; 550 5.1.1 user unknown")


def send(client: TestClient, to: str, **extra: Any) -> str:
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET, **extra})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def status(client: TestClient, message_id: str) -> str:
    return str(client.get(f"/v1/messages/{message_id}").json()["status"])


def test_hard_bounce_suppresses_and_cancels_the_pending_welcome_steps(client: TestClient, services: Services,
                                                                      mailbox: Mailbox, unique: str) -> None:
    to = f"hard-{unique}@example.com"
    enrolment = client.post("/v1/sequences", json={"sequence": "welcome", "to": to, "context": WELCOME_CONTEXT})
    steps = enrolment.json()["steps"]
    wait_until(lambda: status(client, steps[0]["message_id"]) == "sent", timeout=15, what="step 1 sent")
    # WHEN SES reports a permanent bounce for the first step
    assert services.feedback.process(bounce(to, message_id=steps[0]["message_id"])) == "applied"
    # THEN the address is suppressed, step 1 is bounced and the later steps are cancelled
    assert services.suppressions.get(to).reason == "hard_bounce"  # type: ignore[union-attr]
    statuses = [s["status"] for s in client.get(f"/v1/sequences/{enrolment.json()['id']}").json()["steps"]]
    assert statuses == ["bounced", "cancelled", "cancelled"]
    # and the same notification again changes nothing
    assert services.feedback.process(bounce(to, message_id=steps[0]["message_id"])) == "duplicate"


def test_five_soft_bounces_suppress_four_do_not(services: Services, unique: str) -> None:
    to = f"soft-{unique}@example.com"
    start = datetime.now(UTC) - timedelta(days=10)
    for n in range(4):
        services.feedback.process(bounce(to, kind="Transient", n=n, at=start + timedelta(days=n)))
    services.feedback.process(bounce(to, kind="Transient", n=3, at=start + timedelta(days=3)))  # a repeat
    assert services.suppressions.get(to) is None
    services.feedback.process(bounce(to, kind="Undetermined", n=4, at=start + timedelta(days=4)))
    assert services.suppressions.get(to).reason == "soft_bounce_limit"  # type: ignore[union-attr]


def test_old_soft_bounces_fall_out_of_the_window(services: Services, unique: str) -> None:
    to = f"oldsoft-{unique}@example.com"
    now = datetime.now(UTC)
    for n in range(4):
        services.feedback.process(bounce(to, kind="Transient", n=n, at=now - timedelta(days=60 + n)))
    services.feedback.process(bounce(to, kind="Transient", n=9, at=now))
    assert services.suppressions.get(to) is None


def test_complaint_suppresses_everything(client: TestClient, services: Services, unique: str) -> None:
    to = f"complainer-{unique}@example.com"
    services.feedback.process(DeliveryEvent(kind=EventKind.COMPLAINT, recipient=to, occurred_at=datetime.now(UTC),
                                            event_id=event_id("complaint", to), complaint_type="abuse"))
    assert services.suppressions.get(to).reason == "spam_complaint"  # type: ignore[union-attr]
    message_id = send(client, to)
    wait_until(lambda: status(client, message_id) == "suppressed", timeout=15, what="suppressed at send time")


def test_unsubscribed_still_gets_transactional_but_not_marketing(client: TestClient, services: Services,
                                                                 mailbox: Mailbox, unique: str) -> None:
    to = f"unsub-{unique}@example.com"
    services.suppressions.add(to, reason="unsubscribed", source="test")
    reset = send(client, to)
    wait_until(lambda: status(client, reset) == "sent", timeout=15, what="password reset delivered")
    news = client.post("/v1/messages", json={"template": "welcome", "to": to, "context": WELCOME_CONTEXT}).json()
    wait_until(lambda: status(client, news["id"]) == "suppressed", timeout=15, what="marketing suppressed")
    assert len(mailbox.for_recipient(to)) == 1


def links_of(mailbox: Mailbox, to: str) -> tuple[list[str], str, str]:
    entry = mailbox.for_recipient(to)[0]
    msg = message_from_bytes(mailbox.raw(entry.id), policy=policy.default)
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    clicks = re.findall(r'href="[^"]*(/t/c/[^"]+)"', html)
    pixel = re.findall(r'src="[^"]*(/t/o/[^"]+)"', html)[0]
    unsubscribe = str(msg["List-Unsubscribe"]).strip("<>")
    return clicks, pixel, unsubscribe


def test_tracking_records_opens_and_clicks_and_refuses_tampering(client: TestClient, services: Services,
                                                                 mailbox: Mailbox, unique: str) -> None:
    to = f"tracked-{unique}@example.com"
    resp = client.post("/v1/messages", json={"template": "welcome", "to": to, "context": WELCOME_CONTEXT})
    message_id = resp.json()["id"]
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="tracked mail")
    clicks, pixel, _ = links_of(mailbox, to)
    assert clicks, "marketing links are rewritten"
    # a click redirects exactly where the email pointed
    later = datetime.now(UTC) + timedelta(seconds=60)
    redirect = client.get(clicks[0], headers={"User-Agent": HUMAN_UA})
    assert redirect.status_code == 302 and redirect.headers["location"] == "https://app.example.com/login"
    # a tampered token (one character changed, or a URL swapped in) is a 404 and no redirect
    token = clicks[0].rsplit("/", 1)[1]
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert client.get(f"/t/c/{tampered}").status_code == 404
    assert client.get("/t/c/eyJ1IjoiaHR0cHM6Ly9ldmlsLmV4YW1wbGUifQ.x").status_code == 404
    # opens: the pixel is a no-cache GIF; a proxy's fetch counts as machine, a person's as human
    mpp = client.get(pixel, headers={"User-Agent": "Mozilla/5.0", "X-Forwarded-For": "17.58.1.2"})
    assert mpp.status_code == 200 and mpp.headers["content-type"] == "image/gif"
    assert "no-store" in mpp.headers["cache-control"]
    # a person opens it a minute later (opens within seconds of sending are prefetches)
    assert services.tracker.open(pixel.rsplit("/", 1)[1], user_agent=HUMAN_UA, ip="203.0.113.9", country="DE",
                                 now=later)
    events = {i["sk"].split("#")[0]: i for i in services.stats_table.query_all(pk=f"EVT#{message_id}")}
    assert {"open", "click", "FIRST"} <= set(events)
    machine_flags = sorted(bool(i.get("machine")) for i in services.stats_table.query_all(
        pk=f"EVT#{message_id}", sk_prefix="open#"))
    assert machine_flags == [False, True]


def test_one_click_unsubscribe_then_campaign_skips_the_contact(client: TestClient, services: Services,
                                                               mailbox: Mailbox, unique: str) -> None:
    domain = f"oc{unique}.example.com"
    list_id = client.post("/v1/lists", json={"name": f"oneclick-{unique}"}).json()["id"]
    for i in range(3):
        client.put(f"/v1/contacts/m{i}@{domain}", json={"lists": {list_id: "subscribed"}})
    body = {"name": "news", "template": "getting_started", "audience": [{"list_id": list_id}],
            "context": {"steps": [], "dashboard_url": "https://a.example.com/", "docs_url": "https://d.example.com/"}}
    first = client.post("/v1/campaigns", json=body).json()["id"]
    client.post(f"/v1/campaigns/{first}/send")
    wait_until(lambda: len(mailbox.for_recipient(f"m0@{domain}")) == 1, timeout=30, what="first campaign")
    _, _, unsubscribe_url = links_of(mailbox, f"m0@{domain}")
    path = unsubscribe_url.split("://", 1)[1].split("/", 1)[1]
    page = client.get(f"/{path}")
    assert page.status_code == 200 and "Unsubscribe" in page.text
    one_click = client.post(f"/{path}", content=b"List-Unsubscribe=One-Click",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert one_click.status_code == 200 and one_click.text == ""
    member = client.get(f"/v1/contacts/m0@{domain}").json()
    assert member["lists"][list_id] == "unsubscribed"
    wait_until(lambda: all(len(mailbox.for_recipient(f"m{i}@{domain}")) == 1 for i in range(3)), timeout=30,
               what="first campaign to all")
    second = client.post("/v1/campaigns", json=body).json()["id"]
    client.post(f"/v1/campaigns/{second}/send")
    wait_until(lambda: all(len(mailbox.for_recipient(f"m{i}@{domain}")) == 2 for i in (1, 2)), timeout=30,
               what="second campaign")
    assert len(mailbox.for_recipient(f"m0@{domain}")) == 1
    assert client.post("/u/not-a-token", content=b"List-Unsubscribe=One-Click").status_code == 404


def test_suppressed_address_is_skipped_by_a_campaign(client: TestClient, services: Services, mailbox: Mailbox,
                                                     unique: str) -> None:
    domain = f"sc{unique}.example.com"
    list_id = client.post("/v1/lists", json={"name": f"supp-{unique}"}).json()["id"]
    for i in range(2):
        client.put(f"/v1/contacts/s{i}@{domain}", json={"lists": {list_id: "subscribed"}})
    assert client.post("/v1/suppressions", json={"email": f"s0@{domain}", "reason": "manual"}).status_code == 201
    campaign = client.post("/v1/campaigns", json={
        "name": "skip", "template": "getting_started", "audience": [{"list_id": list_id}],
        "context": {"steps": [], "dashboard_url": "https://a.example.com/", "docs_url": "https://d.example.com/"},
    }).json()["id"]
    client.post(f"/v1/campaigns/{campaign}/send")
    wait_until(lambda: len(mailbox.for_recipient(f"s1@{domain}")) == 1, timeout=30, what="campaign")
    assert mailbox.for_recipient(f"s0@{domain}") == []


def test_suppression_api(client: TestClient, unique: str) -> None:
    email = f"api-{unique}@example.com"
    assert client.post("/v1/suppressions", json={"email": email}).json()["reason"] == "manual"
    assert client.get(f"/v1/suppressions/{email}").status_code == 200
    assert email in client.get("/v1/suppressions/export.csv").text
    assert any(i["email"] == email for i in client.get("/v1/suppressions", params={"search": unique}).json()["data"])
    assert client.post("/v1/suppressions", json={"email": "nope"}).status_code == 422
    assert client.delete(f"/v1/suppressions/{email}").status_code == 204
    assert client.get(f"/v1/suppressions/{email}").status_code == 404


def test_delivery_after_bounce_does_not_undo_it(client: TestClient, services: Services, unique: str) -> None:
    to = f"order-{unique}@example.com"
    message_id = send(client, to)
    wait_until(lambda: status(client, message_id) == "sent", timeout=15, what="sent")
    services.feedback.process(bounce(to, message_id=message_id))
    services.feedback.process(DeliveryEvent(kind=EventKind.DELIVERY, recipient=to, occurred_at=datetime.now(UTC),
                                            event_id=event_id("delivery", message_id), message_id=message_id))
    assert status(client, message_id) == "bounced"
