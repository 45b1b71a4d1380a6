"""The audit log: every management action with its actor and change, and the query API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id
from jetmail.devstack.stack import StackState
from jetmail.services import Services
from stacktools import Isolated

WELCOME_CONTEXT = {"login_url": "https://app.example.com/login"}


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # no worker: a campaign that was sent stays "sending", so pause and resume are deterministic; and the
    # audit log holds only this module's entries
    own = Isolated(stack, tmp_path_factory.mktemp("audit"))
    yield own
    own.close()


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def key_actor(token: str) -> str:
    return "key:" + token.split("_")[1]


def entries(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    resp = client.get("/v1/audit", params=params)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


def test_api_actions_are_recorded_with_the_key_and_what_changed(client: TestClient, isolated: Isolated) -> None:
    actor = key_actor(isolated.token)
    # GIVEN a template saved and deleted, a campaign through every action, a suppression added and
    # removed, a contact erased and marketing sending resumed, all through the API
    tpl = {"name": "audited", "locale": "en", "subject": "Hi", "category": "marketing",
           "html": '<p>{{ company.address }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'}
    assert client.post("/v1/templates", json=tpl).status_code == 201
    assert client.delete("/v1/templates/audited").status_code == 204
    list_id = client.post("/v1/lists", json={"name": "audit"}).json()["id"]
    body = {"name": "audit", "template": "welcome", "context": WELCOME_CONTEXT, "audience": [{"list_id": list_id}]}
    scheduled = client.post("/v1/campaigns", json=body).json()["id"]
    at = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    assert client.post(f"/v1/campaigns/{scheduled}/schedule", json={"at": at.isoformat()}).status_code == 200
    assert client.post(f"/v1/campaigns/{scheduled}/cancel").status_code == 200
    sent = client.post("/v1/campaigns", json=body).json()["id"]
    for action in ("send", "pause", "resume", "cancel"):
        assert client.post(f"/v1/campaigns/{sent}/{action}").status_code == 200, action
    assert client.post("/v1/suppressions", json={"email": "Audit@Example.com"}).status_code == 201
    assert client.delete("/v1/suppressions/audit@example.com").status_code == 204
    assert client.put("/v1/contacts/gone@example.com", json={"name": "Gone"}).status_code == 201
    assert client.delete("/v1/contacts/gone@example.com", params={"erase": "true"}).status_code == 200
    assert client.post("/v1/sending/resume").status_code == 200

    # THEN each appears once, newest first, with the key as actor and a small summary of the change
    found = entries(client, actor=actor, limit=500)
    assert all(e["actor"] == actor for e in found)
    assert [e["at"] for e in found] == sorted((e["at"] for e in found), reverse=True)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for entry in found:
        by_action.setdefault(entry["action"], []).append(entry)
    saved = [e for e in by_action["template.saved"] if e["target"] == "audited/en"]
    assert [e["changes"] for e in saved] == [{"version": 1, "category": "marketing", "subject": "Hi"}]
    assert [e["target"] for e in by_action["template.deleted"]] == ["audited"]
    campaign_actions = [(e["action"], e["target"]) for e in reversed(found) if e["action"].startswith("campaign.")]
    assert campaign_actions == [("campaign.scheduled", scheduled), ("campaign.cancelled", scheduled),
                                ("campaign.sent", sent), ("campaign.paused", sent), ("campaign.resumed", sent),
                                ("campaign.cancelled", sent)]
    assert by_action["campaign.scheduled"][0]["changes"]["at"] == at.isoformat()
    assert by_action["campaign.paused"][0]["changes"] == {"state": "paused"}
    pseudonym = isolated.services.pseudonyms.pseudonym("audit@example.com")
    assert [(e["target"], e["changes"].get("reason")) for e in by_action["suppression.added"]] == [(pseudonym,
                                                                                                   "manual")]
    assert [e["target"] for e in by_action["suppression.removed"]] == [pseudonym]
    [erased] = by_action["contact.erased"]
    assert erased["target"] == isolated.services.pseudonyms.pseudonym("gone@example.com")
    assert erased["changes"]["contact"] is True
    assert by_action["sending.resumed"][0]["target"] == "marketing"
    # and no entry names a person by address
    assert "@example.com" not in json.dumps(found).lower()
    # and the target filter takes an address, matched by its pseudonym
    assert [e["action"] for e in entries(client, target="gone@example.com")] == ["contact.erased"]


def test_feedback_suppressions_are_not_management_actions(client: TestClient, isolated: Isolated) -> None:
    # GIVEN a hard bounce, which suppresses the address
    services: Services = isolated.services
    services.feedback.process(DeliveryEvent(kind=EventKind.BOUNCE, recipient="bounced@example.com",
                                            occurred_at=datetime.now(UTC), event_id=event_id("audit-bounce"),
                                            bounce_type="Permanent"))
    assert services.suppressions.get("bounced@example.com") is not None
    # THEN the audit log does not record it (the event log does)
    target = services.pseudonyms.pseudonym("bounced@example.com")
    assert entries(client, target=target) == []


def test_keys_cli_records_who_created_and_revoked_a_key_never_the_key(client: TestClient, isolated: Isolated,
                                                                      repo_root: Path) -> None:
    def jetmail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jetmail.cli", *args], env=isolated.env, cwd=repo_root,
                              capture_output=True, text=True, timeout=120)

    # WHEN a key is created, limited, rotated and revoked from the CLI
    created = jetmail("keys", "create", "--name", "audited-key", "--scope", "send")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    key_id = token.split("_")[1]
    assert jetmail("keys", "limit", key_id, "--per-minute", "30").returncode == 0
    rotated = jetmail("keys", "rotate", key_id, "--grace", "1h")
    assert rotated.returncode == 0, rotated.stderr
    assert jetmail("keys", "revoke", key_id).returncode == 0
    # THEN each is recorded with the CLI user as actor, and neither secret appears anywhere
    found = entries(client, target=key_id)
    assert [e["action"] for e in found] == ["key.revoked", "key.rotated", "key.limit_set", "key.created"]
    assert all(e["actor"].startswith("cli:") and len(e["actor"]) > 4 for e in found)
    assert [e["changes"] for e in found[1:]] == [{"grace_s": 3600}, {"per_minute": 30},
                                                 {"name": "audited-key", "scopes": ["send"]}]
    dumped = json.dumps(found)
    for secret in (token, rotated.stdout.strip().splitlines()[-1]):
        assert secret not in dumped and secret.split("_", 2)[2] not in dumped
    # and `jetmail audit` lists the same, newest first; a bad time is one error line
    listed = jetmail("audit", "--target", key_id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["action"] for line in listed.stdout.splitlines()] == [e["action"] for e in found]
    bad = jetmail("audit", "--since", "yesterday")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_query_is_paginated_filtered_and_admin_only(client: TestClient, isolated: Isolated) -> None:
    # GIVEN five entries of one action
    audit = isolated.services.audit
    made = [audit.record("test.paged", target=f"t{i}", actor="key:pager", changes={"i": i}) for i in range(5)]
    # WHEN they are read two at a time
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"action": "test.paged", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/audit", params=params).json()
        seen += [e["target"] for e in page["data"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    # THEN every entry comes once, newest first
    assert seen == ["t4", "t3", "t2", "t1", "t0"]
    # and since/until bound the time (inclusive), an action prefix matches, and an unknown actor finds nothing
    middle = entries(client, action="test.", since=made[1].at, until=made[3].at)
    assert [e["target"] for e in middle] == ["t3", "t2", "t1"]
    assert entries(client, action="test.paged", actor="key:nobody") == []
    # and bad input is a 422, a send-only key a 403
    assert client.get("/v1/audit", params={"since": "yesterday"}).status_code == 422
    assert client.get("/v1/audit", params={"cursor": "bm90LWEtY3Vyc29y"}).status_code == 422
    _, send_token = isolated.services.api_keys.create("sender", scopes=["send"])
    assert client.get("/v1/audit", headers={"Authorization": f"Bearer {send_token}"}).status_code == 403
