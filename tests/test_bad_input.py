"""Bad input the API used to take and then fail on: refused up front with a 4xx naming the field, state untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.queue import NotFoundError
from jetmail.services import Services

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def client(services: Services, api_token: str) -> Iterator[TestClient]:
    with TestClient(create_app(services.settings, services=services),
                    headers={"Authorization": f"Bearer {api_token}"}) as c:
        yield c


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
