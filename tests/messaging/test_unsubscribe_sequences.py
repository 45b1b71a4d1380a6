"""An unsubscribe (page, one-click or one list) stops the recipient's pending marketing sequence steps."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id
from jetmail.deliverability.tracking import Unsubscribe
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from stacktools import api_client

CONTEXT = {"login_url": "https://app.example.com/login", "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/", "steps": [], "tips": [], "blog_url": "https://example.com/blog",
           "reset_url": "https://example.com/r", "expires_in_minutes": 30}
# marketing now, marketing in an hour, a transactional notice in an hour
STEPS = [{"template": "welcome"}, {"template": "getting_started", "delay": 3600},
         {"template": "password_reset", "delay": 3600}]


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


@pytest.mark.parametrize("how", ["page", "one_click", "list"])
def test_unsubscribing_cancels_pending_marketing_steps_and_says_why(client: TestClient, services: Services,
                                                                    mailbox: Mailbox, unique: str, how: str) -> None:
    # GIVEN a subscribed contact enrolled in a series whose first (marketing) step has arrived
    to = f"unsub-{how}-{unique}@example.com"
    list_id = client.post("/v1/lists", json={"name": f"seq-{how}-{unique}"}).json()["id"]
    client.put(f"/v1/contacts/{to}", json={"lists": {list_id: "subscribed"}})
    enrolled = client.post("/v1/sequences", json={"steps": STEPS, "to": to, "context": CONTEXT})
    assert enrolled.status_code == 202, enrolled.text
    enrolment = enrolled.json()
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=20, what="the first step")
    link = str(mailbox.message(mailbox.for_recipient(to)[0].id)["List-Unsubscribe"]).strip("<>")
    path = "/" + link.split("://", 1)[1].split("/", 1)[1]
    # WHEN the recipient unsubscribes
    if how == "page":
        resp = client.post(path, content=b"scope=all", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status_code == 200 and "unsubscribed" in resp.text
    elif how == "one_click":
        resp = client.post(path, content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status_code == 200
    else:
        # the page's "this list" button, for a link that names the list
        target = services.tracker.unsubscribe_target(path.rsplit("/", 1)[1])
        assert target is not None
        services.tracker.unsubscribe(Unsubscribe(message_id=target.message_id, email=to, list_id=list_id),
                                     everything=False)
        assert client.get(f"/v1/contacts/{to}").json()["lists"][list_id] == "unsubscribed"
    # THEN the pending marketing step is cancelled, the transactional one still waits for its time,
    # and the enrolment says why
    shown = client.get(f"/v1/sequences/{enrolment['id']}").json()
    assert [s["status"] for s in shown["steps"]] == ["sent", "cancelled", "scheduled"]
    assert shown["reason"] == "unsubscribed"
    assert shown["status"] == "active"  # the transactional notice is still to come
    # AND cancelling the rest by hand finishes it
    assert client.delete(f"/v1/sequences/{enrolment['id']}").status_code == 200
    done = client.get(f"/v1/sequences/{enrolment['id']}").json()
    assert done["status"] == "cancelled" and [s["status"] for s in done["steps"]][1:] == ["cancelled", "cancelled"]


def test_a_hard_bounce_records_why_the_enrolment_stopped(client: TestClient, services: Services,
                                                         unique: str) -> None:
    to = f"why-{unique}@example.com"
    enrolment = client.post("/v1/sequences", json={"steps": STEPS[1:], "to": to, "context": CONTEXT}).json()
    services.feedback.process(DeliveryEvent(kind=EventKind.BOUNCE, recipient=to, occurred_at=datetime.now(UTC),
                                            event_id=event_id("bounce", to), bounce_type="Permanent",
                                            bounce_subtype="General"))
    shown = client.get(f"/v1/sequences/{enrolment['id']}").json()
    assert shown["status"] == "cancelled" and shown["reason"] == "suppressed: hard_bounce"
    assert [s["status"] for s in shown["steps"]] == ["cancelled", "cancelled"]
