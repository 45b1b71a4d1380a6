"""Bad input the API used to take and then fail on: refused up front with a 4xx naming the field, state untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.queue import NotFoundError
from jetmail.services import Services
from stacktools import api_client

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def client(services: Services, api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def _draft_campaign(client: TestClient, unique: str) -> str:
    list_id = client.post("/v1/lists", json={"name": f"cron-{unique}"}).json()["id"]
    body = json.dumps({"email": f"c@{unique}.example.com"}).encode()
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body).status_code == 200
    resp = client.post("/v1/campaigns", json={"name": "cron", "template": "getting_started", "context": CONTEXT,
                                              "audience": [{"list_id": list_id}]})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _detail(resp: Any) -> str:
    return json.dumps(resp.json())


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 0 31 2 *", "0 0 * * 5-1", "0 0 L * *"])
def test_a_cron_the_server_refuses_is_a_422_and_changes_nothing(client: TestClient, services: Services,
                                                                 unique: str, cron: str) -> None:
    # GIVEN a draft campaign
    campaign_id = _draft_campaign(client, unique)
    # WHEN it is scheduled on a cron nats-server would refuse
    resp = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"cron": cron})
    # THEN the answer is 422 naming the cron, the campaign is still a draft and no schedule exists
    assert resp.status_code == 422, resp.text
    assert "cron" in _detail(resp)
    after = client.get(f"/v1/campaigns/{campaign_id}").json()
    assert after["state"] == "draft" and not after.get("cron")
    with pytest.raises(NotFoundError):
        services.queue.get_schedule(f"cmp-{campaign_id}")
    # AND a valid cron schedules it at once (no 409 left behind)
    again = client.post(f"/v1/campaigns/{campaign_id}/schedule", json={"cron": "0 0 1 1 *"})
    assert again.status_code == 200, again.text
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel").json()["state"] == "cancelled"


# ---------------------------------------------------------------- transactional messages

RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}


@pytest.mark.parametrize(("change", "field"), [
    ({"reply_to": "a@example.com, b@example.com"}, "reply_to"),
    ({"context": {**RESET, "note": "\ud800"}}, "context"),
    ({"context": {**RESET, "unsubscribe_url": "https://evil.example/u"}}, "context"),
])
def test_what_the_worker_would_refuse_is_a_422_naming_the_field(client: TestClient, unique: str,
                                                                 change: dict[str, Any], field: str) -> None:
    # WHEN a message carries something the send pipeline cannot send
    body = {"template": "password_reset", "to": f"bad-{unique}@example.com", "context": RESET, **change}
    resp = client.post("/v1/messages", content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json"})
    # THEN the API refuses it, naming the field, instead of a 202 that fails in the worker
    assert resp.status_code == 422, resp.text
    assert field in _detail(resp)


def test_an_ascii_local_part_at_an_idn_domain_is_sent_with_a_punycode_domain(
        client: TestClient, mailbox: Mailbox, email_worker: Any, unique: str) -> None:
    # GIVEN an address whose local part is ASCII and whose domain is not
    to = f"jose{unique}@exämple.com"
    # WHEN it is sent
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET})
    assert resp.status_code == 202, resp.text
    # THEN it reaches the sink at the punycode domain and the message ends sent
    ascii_to = f"jose{unique}@xn--exmple-cua.com"
    wait_until(lambda: status_of(client, resp.json()["id"]) in ("sent", "failed"), timeout=20, what="an outcome")
    assert status_of(client, resp.json()["id"]) == "sent", client.get(f"/v1/messages/{resp.json()['id']}").text
    assert len(mailbox.for_recipient(ascii_to)) == 1


def status_of(client: TestClient, message_id: str) -> str:
    return str(client.get(f"/v1/messages/{message_id}").json()["status"])


@pytest.mark.parametrize("steps", [
    [{"template": "welcome", "delay": "P99999Y"}],
    [{"template": "welcome", "delay": "P99999999D"}],
    [{"template": "welcome", "delay": "P11Y"}],
    [{"template": "shipping_notification", "at": {"context_field": "eta", "offset": "P99999Y"}}],
])
def test_sequence_delays_past_the_horizon_are_a_422_when_enrolled_and_when_defined(
        client: TestClient, unique: str, steps: list[dict[str, Any]]) -> None:
    to = f"seq-far-{unique}@example.com"
    enrol = client.post("/v1/sequences", json={"steps": steps, "to": to, "context": {"eta": "2030-01-01"}})
    assert enrol.status_code == 422, enrol.text
    defined = client.put(f"/v1/sequences/definitions/far-{unique}", json={"name": f"far-{unique}", "steps": steps})
    assert defined.status_code == 422, defined.text
    # and nothing was stored under that name
    assert f"far-{unique}" not in {d["name"] for d in client.get("/v1/sequences/definitions").json()["data"]}


def test_a_context_date_at_the_calendars_end_plus_an_offset_is_a_422(client: TestClient, unique: str) -> None:
    steps = [{"template": "shipping_notification", "at": {"context_field": "eta", "offset": "P1D"}}]
    resp = client.post("/v1/sequences", json={"steps": steps, "to": f"seq-end-{unique}@example.com",
                                              "context": {"eta": "9999-12-31T00:00:00Z"}})
    assert resp.status_code == 422 and "eta" in resp.text, resp.text


def test_a_cron_schedule_that_cannot_be_published_leaves_the_campaign_as_it_was(
        stack: Any, services: Services, unique: str) -> None:
    from jetmail.campaigns.model import AudienceSource, CampaignCreate, ScheduleRequest
    from jetmail.devstack.stack import free_port
    from jetmail.services import Services as Built
    from stacktools import make_settings

    # GIVEN a draft and a services container whose NATS is unreachable
    offline = Built(make_settings(stack, nats_url=f"nats://127.0.0.1:{free_port()}"))
    lst = services.contacts.create_list(f"offline-{unique}")
    draft = services.campaigns.create(CampaignCreate(name="offline", template="getting_started", context=CONTEXT,
                                                     audience=[AudienceSource(list_id=lst.id)]))
    # WHEN it is given a cron that cannot reach the server
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises; the state is what matters
        offline.campaigns.schedule(draft.id, ScheduleRequest(cron="0 9 * * 1", timezone="UTC"))
    # THEN it is still a draft without a cron
    after = services.campaigns.get(draft.id)
    assert after.state == "draft" and not getattr(after, "cron", None)
