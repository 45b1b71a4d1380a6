"""Sequences: step messages scheduled as native JetStream schedules, cancellable per recipient."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from stacktools import api_client

CONTEXT = {
    "login_url": "https://app.example.com/login",
    "dashboard_url": "https://app.example.com/",
    "docs_url": "https://docs.example.com/",
    "steps": [{"title": "Verify", "description": "Add DNS records."}],
    "tips": [{"title": "Preheader", "body": "Keep it short.", "url": "https://example.com/tips"}],
    "blog_url": "https://example.com/blog",
}


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def subjects(mailbox: Mailbox, to: str) -> list[str]:
    return [str(mailbox.message(e.id)["Subject"]) for e in mailbox.for_recipient(to)]


def test_series_sends_first_step_now_and_later_steps_at_their_delays(client: TestClient, mailbox: Mailbox,
                                                                     unique: str) -> None:
    to = f"series-{unique}@example.com"
    started = datetime.now(UTC)
    resp = client.post("/v1/sequences", json={
        "steps": [{"template": "welcome"}, {"template": "getting_started", "delay": 1},
                  {"template": "tips_and_tricks", "delay": 2}],
        "to": to, "name": "Grace", "context": CONTEXT})
    assert resp.status_code == 202, resp.text
    enrolment = resp.json()
    assert [s["template"] for s in enrolment["steps"]] == ["welcome", "getting_started", "tips_and_tricks"]
    wait_until(lambda: len(mailbox.for_recipient(to)) == 3, timeout=20, what="three steps")
    arrivals = [e.received_at - started.timestamp() for e in mailbox.for_recipient(to)]
    assert arrivals == sorted(arrivals)
    assert arrivals[1] >= 0.95 and arrivals[2] >= 1.95  # never before their time
    steps = client.get(f"/v1/sequences/{enrolment['id']}").json()["steps"]
    assert {s["status"] for s in steps} == {"sent"}


def test_builtin_welcome_schedules_later_steps_and_cancel_stops_them(client: TestClient, services: Services,
                                                                     mailbox: Mailbox, unique: str) -> None:
    to = f"builtin-{unique}@example.com"
    resp = client.post("/v1/sequences", json={"sequence": "welcome", "to": to, "context": CONTEXT})
    enrolment = resp.json()
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="welcome step")
    steps = client.get(f"/v1/sequences/{enrolment['id']}").json()["steps"]
    assert [s["status"] for s in steps] == ["sent", "scheduled", "scheduled"]
    due = [datetime.fromisoformat(s["send_at"]) for s in steps]
    assert timedelta(hours=23) < due[1] - due[0] < timedelta(hours=25)
    assert timedelta(days=6, hours=23) < due[2] - due[0] < timedelta(days=7, hours=1)
    # WHEN the recipient's pending steps are cancelled
    cancelled = client.delete("/v1/sequences", params={"to": to})
    assert cancelled.json() == {"cancelled_messages": 2}
    steps = client.get(f"/v1/sequences/{enrolment['id']}").json()["steps"]
    assert [s["status"] for s in steps] == ["sent", "cancelled", "cancelled"]
    # THEN their native schedules are gone too (cancelling again finds nothing)
    assert services.queue.cancel(steps[1]["message_id"]) is False


def test_cancelled_step_never_sends(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"cancel-{unique}@example.com"
    resp = client.post("/v1/sequences", json={
        "steps": [{"template": "welcome"}, {"template": "getting_started", "delay": 1}],
        "to": to, "context": CONTEXT})
    enrolment_id = resp.json()["id"]
    assert client.delete(f"/v1/sequences/{enrolment_id}").json()["cancelled_messages"] >= 1
    # a marker due after the cancelled step: once it has arrived, the cancelled step's time has passed
    marker = f"marker-{unique}@example.com"
    client.post("/v1/messages", json={"template": "welcome", "to": marker, "context": CONTEXT,
                                      "send_at": (datetime.now(UTC) + timedelta(seconds=2)).isoformat()})
    wait_until(lambda: len(mailbox.for_recipient(marker)) == 1, timeout=15, what="marker")
    assert len(mailbox.for_recipient(to)) <= 1  # the first step may have gone out before the cancel
    assert all("Getting started" not in s for s in subjects(mailbox, to))


def test_order_sequence_times_shipping_from_context(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"order-{unique}@example.com"
    estimated = datetime.now(UTC) + timedelta(days=1, seconds=2)
    context = {
        "order": {"number": "A-1", "placed_on": "2026-11-28", "items": [{"name": "Pen", "quantity": 1,
                                                                       "price": "€ 3"}],
                  "subtotal": "€ 3", "shipping": "€ 1", "total": "€ 4"},
        "order_url": "https://shop.example.com/o/A-1", "carrier": "DHL", "tracking_number": "123",
        "tracking_url": "https://dhl.example.com/123", "estimated_delivery": estimated.isoformat(),
    }
    resp = client.post("/v1/sequences", json={"sequence": "order", "to": to, "context": context})
    assert resp.status_code == 202, resp.text
    shipping_at = datetime.fromisoformat(resp.json()["steps"][1]["send_at"])
    assert abs((shipping_at - (estimated - timedelta(days=1))).total_seconds()) < 0.01
    wait_until(lambda: len(mailbox.for_recipient(to)) == 2, timeout=20, what="order + shipping")


def test_sequence_errors_are_clear(client: TestClient) -> None:
    unknown = client.post("/v1/sequences", json={"sequence": "nope", "to": "a@example.com"})
    assert unknown.status_code == 404
    both = client.post("/v1/sequences", json={"sequence": "welcome", "steps": [{"template": "welcome"}],
                                              "to": "a@example.com"})
    assert both.status_code == 422
    missing = client.post("/v1/sequences", json={"sequence": "order", "to": "a@example.com", "context": {}})
    assert missing.status_code == 422 and "estimated_delivery" in missing.json()["detail"]
    assert client.delete("/v1/sequences/seq_missing").status_code == 404


def test_a_reused_idempotency_key_with_another_body_is_a_409(client: TestClient, services: Services,
                                                              unique: str) -> None:
    # GIVEN an enrolment made with an Idempotency-Key
    body = {"steps": [{"template": "welcome"}, {"template": "getting_started", "delay": "P1D"}],
            "to": f"idem-{unique}@example.com", "context": CONTEXT}
    headers = {"Idempotency-Key": f"sequence-{unique}"}
    first = client.post("/v1/sequences", json=body, headers=headers)
    assert first.status_code == 202, first.text
    # WHEN the same key comes with the same body THEN the same enrolment is answered, replayed
    again = client.post("/v1/sequences", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert [s["message_id"] for s in again.json()["steps"]] == [s["message_id"] for s in first.json()["steps"]]
    # WHEN it comes with another recipient or another context THEN 409, as POST /v1/messages answers
    for other in [{**body, "to": f"other-{unique}@example.com"}, {**body, "context": {**CONTEXT, "x": 1}}]:
        conflict = client.post("/v1/sequences", json=other, headers=headers)
        assert conflict.status_code == 409, conflict.text
        assert conflict.headers["content-type"].startswith("application/problem+json")
        assert "different request body" in conflict.json()["detail"]
    # AND nothing was enrolled for the other recipient
    assert services.sequences.enrolments_of(f"other-{unique}@example.com") == []
