"""Export and erasure of everything held about one person, retention TTLs, against the real stack."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from jetmail.storage.table import Table, from_item
from stacktools import api_client

WELCOME_CONTEXT = {"login_url": "https://app.example.com/login", "dashboard_url": "https://app.example.com/",
                   "docs_url": "https://docs.example.com/", "steps": [], "tips": [],
                   "blog_url": "https://example.com/blog"}
RESET = {"reset_url": "https://example.com/r/secret-reset-token", "expires_in_minutes": 30}


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token, follow_redirects=False)


def status(client: TestClient, message_id: str) -> str:
    return str(client.get(f"/v1/messages/{message_id}").json()["status"])


def person(client: TestClient, services: Services, to: str, unique: str) -> dict[str, Any]:
    """A contact in a list, a transactional message, a welcome sequence (step 1 sent, two pending) and
    delivery and open events, all made through the API and the worker."""
    list_id = client.post("/v1/lists", json={"name": f"gdpr-{unique}"}).json()["id"]
    resp = client.put(f"/v1/contacts/{to}", json={"name": "Ada Lovelace", "attributes": {"plan": "pro"},
                                                  "lists": {list_id: "subscribed"}})
    assert resp.status_code == 201, resp.text
    reset = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET})
    assert reset.status_code == 202, reset.text
    enrolment = client.post("/v1/sequences", json={"sequence": "welcome", "to": to, "context": WELCOME_CONTEXT})
    assert enrolment.status_code == 202, enrolment.text
    steps = [s["message_id"] for s in enrolment.json()["steps"]]
    reset_id = reset.json()["id"]
    wait_until(lambda: status(client, reset_id) == "sent" and status(client, steps[0]) == "sent", timeout=20,
               what="the reset email and step 1 sent")
    now = datetime.now(UTC)
    for kind in (EventKind.DELIVERY, EventKind.OPEN):
        services.feedback.process(DeliveryEvent(kind=kind, recipient=to.lower(), occurred_at=now, message_id=reset_id,
                                                event_id=event_id(kind, to, reset_id), source="simulator"))
    return {"list_id": list_id, "reset": reset_id, "steps": steps, "enrolment": enrolment.json()["id"]}


def scan_for(table: Table, needle: str) -> list[dict[str, Any]]:
    """Every item of the table whose keys or values mention ``needle`` (ignoring case)."""
    found = []
    kwargs: dict[str, Any] = {"TableName": table.name}
    while True:
        resp = table.client.scan(**kwargs)
        for raw in resp.get("Items", []):
            item = from_item(raw)
            if needle.lower() in json.dumps(item, default=str).lower():
                found.append(item)
        if not resp.get("LastEvaluatedKey"):
            return found
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def test_export_holds_everything_stored_about_the_person(client: TestClient, services: Services,
                                                         unique: str) -> None:
    # GIVEN a person with a contact, a list membership, sent and pending mail, events and a suppression
    to = f"Export-{unique}@Example.com"
    made = person(client, services, to, unique)
    assert client.post("/v1/suppressions", json={"email": to, "reason": "unsubscribed"}).status_code == 201
    # WHEN their data is exported
    resp = client.get(f"/v1/contacts/{to}/export")
    # THEN every record is there, the template context included
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["email"] == to.lower()
    assert data["contact"]["name"] == "Ada Lovelace" and data["contact"]["attributes"] == {"plan": "pro"}
    assert [(m["list_id"], m["status"]) for m in data["memberships"]] == [(made["list_id"], "subscribed")]
    assert data["memberships"][0]["list_name"] == f"gdpr-{unique}"
    messages = {m["id"]: m for m in data["messages"]}
    assert set(messages) == {made["reset"], *made["steps"]}
    assert messages[made["reset"]]["context"] == RESET
    assert {messages[s]["status"] for s in made["steps"][1:]} == {"scheduled"}
    assert {(e["kind"], e["message_id"]) for e in data["events"]} == {("delivery", made["reset"]),
                                                                       ("open", made["reset"])}
    assert data["suppression"]["reason"] == "unsubscribed"
    assert [(e["id"], e["status"]) for e in data["sequence_enrolments"]] == [(made["enrolment"], "active")]
    # and an invalid address is a 422, not a 500
    assert client.get("/v1/contacts/not-an-address/export").status_code == 422


def erased_stop(services: Services, email: str) -> str | None:
    """The reason a worker following the stop events holds against ``email`` for its erasure."""
    from jetmail.deliverability.stops import LiveStops

    async def read(q: Any) -> str | None:
        live = LiveStops(q.js, stream=services.settings.stops_stream, pseudonyms=services.pseudonyms)
        try:
            await live.catch_up(None)
            return live.stops(email).get("erased")
        finally:
            await live.close()

    return services.queue.run(read)


def test_erase_leaves_only_a_keyed_hash_and_the_address_is_never_mailed_again(
        client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a person with data everywhere and two pending sequence steps
    to = f"erase-{unique}@example.com"
    made = person(client, services, to, unique)
    delivered = len(mailbox.for_recipient(to))
    assert delivered == 2
    assert scan_for(services.table, to) and scan_for(services.stats_table, to)
    # WHEN they are erased
    resp = client.delete(f"/v1/contacts/{to}", params={"erase": "true"})
    # THEN the report counts what went, and the pending steps are cancelled
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["contact"] is True and report["memberships"] == 1
    assert report["messages_scrubbed"] == 4 and report["messages_cancelled"] == 2
    assert report["events"] >= 2 and report["sequence_enrolments"] == 1
    assert [status(client, s) for s in made["steps"][1:]] == ["cancelled", "cancelled"]
    # and no item in either table mentions the address any more
    assert scan_for(services.table, to) == []
    assert scan_for(services.stats_table, to) == []
    # and the suppression list holds a keyed hash (HMAC, not a plain digest) that still matches it
    entry = services.suppressions.get(to)
    assert entry is not None and entry.reason == "erased" and entry.email.startswith("hmac:")
    assert entry.email != "hmac:" + hashlib.sha256(to.encode()).hexdigest()
    assert services.suppressions.suppressed_among([to.upper()]) == {to.upper().lower(): "erased"}
    # and running campaigns learn of it from the stop events, which hold only the pseudonym
    assert erased_stop(services, to) == "erased"
    # and the export finds nothing readable
    data = client.get(f"/v1/contacts/{to}/export").json()
    assert (data["contact"], data["memberships"], data["messages"], data["events"],
            data["sequence_enrolments"]) == (None, [], [], [], [])
    assert data["suppression"]["reason"] == "erased"
    # and the erasure is not lifted through the suppression API
    assert client.delete(f"/v1/suppressions/{to}").status_code == 404

    # WHEN the address is added as a contact again THEN it is refused
    again_contact = client.put(f"/v1/contacts/{to}", json={"name": "Again"})
    assert again_contact.status_code == 422 and "erased" in again_contact.json()["detail"]
    # WHEN it unsubscribes from marketing only, and is sent a transactional message
    assert client.post("/v1/suppressions", json={"email": to, "reason": "unsubscribed"}).status_code == 201
    again = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET})
    assert again.status_code == 202
    # THEN the erasure still blocks all mail: the message is suppressed and nothing reaches the mailbox
    assert services.suppressions.get(to).reason == "erased"  # type: ignore[union-attr]
    wait_until(lambda: status(client, again.json()["id"]) == "suppressed", timeout=15, what="suppressed")
    assert len(mailbox.for_recipient(to)) == delivered


def test_delete_without_erase_keeps_todays_behaviour(client: TestClient, services: Services, unique: str) -> None:
    # GIVEN a contact that was sent a message
    to = f"plain-{unique}@example.com"
    assert client.put(f"/v1/contacts/{to}", json={"name": "Plain"}).status_code == 201
    sent = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET}).json()
    # WHEN it is deleted without erase
    assert client.delete(f"/v1/contacts/{to}").status_code == 204
    # THEN the contact is gone, a second delete is a 404, and messages and suppressions are untouched
    assert client.get(f"/v1/contacts/{to}").status_code == 404
    assert client.delete(f"/v1/contacts/{to}", params={"erase": "false"}).status_code == 404
    assert [m["id"] for m in client.get(f"/v1/contacts/{to}/export").json()["messages"]] == [sent["id"]]
    assert services.suppressions.get(to) is None


def test_cli_exports_and_erases_only_with_yes(client: TestClient, services: Services, app_env: dict[str, str],
                                              repo_root: Path, unique: str) -> None:
    to = f"cli-{unique}@example.com"
    assert client.put(f"/v1/contacts/{to}", json={"name": "Cli Person"}).status_code == 201

    def jetmail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jetmail.cli", *args], env=app_env, cwd=repo_root,
                              capture_output=True, text=True, timeout=120)

    # WHEN the person's data is exported from the CLI THEN it is JSON with the contact
    exported = jetmail("contacts", "export", to)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["contact"]["name"] == "Cli Person"
    # WHEN erase is asked without --yes THEN nothing happens
    refused = jetmail("contacts", "erase", to)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert client.get(f"/v1/contacts/{to}").status_code == 200
    # WHEN it is confirmed THEN the contact is gone and the address is suppressed as erased
    erased = jetmail("contacts", "erase", to, "--yes")
    assert erased.returncode == 0, erased.stderr
    assert re.search(r"kept hmac:[0-9a-f]{64}", erased.stdout)
    assert client.get(f"/v1/contacts/{to}").status_code == 404
    assert services.suppressions.get(to).reason == "erased"  # type: ignore[union-attr]
    # and a bad address is one error line
    bad = jetmail("contacts", "export", "nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_messages_and_events_expire_after_their_retention(client: TestClient, services: Services,
                                                          repo_root: Path, unique: str) -> None:
    # GIVEN a sent message and an event about it
    to = f"ttl-{unique}@example.com"
    sent = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET}).json()
    services.feedback.process(DeliveryEvent(kind=EventKind.DELIVERY, recipient=to, occurred_at=datetime.now(UTC),
                                            message_id=sent["id"], event_id=event_id("ttl", to), source="simulator"))
    # THEN each carries expires_at from its retention setting
    day = 86400
    record = services.table.get(f"MSG#{sent['id']}", "MSG", consistent=True)
    assert record is not None
    assert abs(record["expires_at"] - (time.time() + services.settings.message_retention_days * day)) < 600
    events = list(services.stats_table.query_all(pk=f"RCPT#{to}", sk_prefix="EVT#", index="gsi1"))
    assert len(events) == 1
    assert abs(events[0]["expires_at"] - (time.time() + services.settings.event_retention_days * day)) < 600
    # and both tables enable TTL on that attribute, locally and in the SAM template
    for table in (services.table, services.stats_table):
        ttl = table.client.describe_time_to_live(TableName=table.name)["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    template = (repo_root / "template.yaml").read_text()
    for resource in ("  Table:\n", "  StatsTable:\n"):
        section = template.split(resource, 1)[1].split("\n  # ", 1)[0]
        assert re.search(r"TimeToLiveSpecification:\s+AttributeName: expires_at\s+Enabled: true", section)


def test_an_erased_address_cannot_be_added_again_nor_mailed_by_a_campaign(client: TestClient, mailbox: Mailbox,
                                                         unique: str) -> None:
    # GIVEN an erased address
    erased, kept = f"gone-{unique}@example.com", f"kept-{unique}@example.com"
    assert client.delete(f"/v1/contacts/{erased}", params={"erase": "true"}).status_code == 200
    list_id = client.post("/v1/lists", json={"name": f"reimport-{unique}"}).json()["id"]
    # WHEN it is added again, alone or in an import next to another subscriber THEN it is refused
    upsert = client.put(f"/v1/contacts/{erased.upper()}", json={"lists": {list_id: "subscribed"}})
    assert upsert.status_code == 422 and "erased" in upsert.json()["detail"], upsert.text
    imported = client.post(f"/v1/lists/{list_id}/import", content=f"email\n{erased}\n{kept}\n".encode(),
                           headers={"Content-Type": "text/csv"})
    report = imported.json()
    assert report["imported"] == 1 and report["failed"] == 1, report
    assert "erased" in str(report["errors"][0]), report
    # WHEN a campaign is sent to the list
    body = {"name": "after-erasure", "template": "getting_started", "audience": [{"list_id": list_id}],
            "context": {"steps": [], "dashboard_url": "https://a.example.com/", "docs_url": "https://d.example.com/"}}
    cid = client.post("/v1/campaigns", json=body).json()["id"]
    assert client.post(f"/v1/campaigns/{cid}/send").status_code == 200
    # THEN only the other subscriber is mailed
    def progress() -> dict[str, int]:
        return dict(client.get(f"/v1/campaigns/{cid}").json()["progress"])

    wait_until(lambda: progress()["sent"] == 1 and mailbox.for_recipient(kept), timeout=30, what="the campaign")
    # (the erased address was left out when the audience was planned, so nothing of it is queued)
    assert progress()["total"] == 1
    assert len(mailbox.for_recipient(kept)) == 1
    assert mailbox.for_recipient(erased) == []


def test_an_address_only_ever_copied_is_exported_and_erased(client: TestClient, services: Services,
                                                            unique: str) -> None:
    # GIVEN an address that was only ever a cc (sent), a bcc beside another one (scheduled), and a cc
    # dropped as suppressed, of other people's transactional messages, with an event of its own
    copied, other_bcc = f"Copied-{unique}@Example.com", f"other-bcc-{unique}@example.com"
    address = copied.lower()
    send = {"template": "password_reset", "context": RESET}
    as_cc = client.post("/v1/messages", json={**send, "to": f"main-{unique}@example.com", "cc": [copied]})
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    as_bcc = client.post("/v1/messages", json={**send, "to": f"second-{unique}@example.com", "send_at": later,
                                               "bcc": [other_bcc, copied]})
    assert as_cc.status_code == as_bcc.status_code == 202, (as_cc.text, as_bcc.text)
    cc_id, bcc_id = as_cc.json()["id"], as_bcc.json()["id"]
    wait_until(lambda: status(client, cc_id) == "sent", timeout=20, what="the copied message sent")
    now = datetime.now(UTC)
    services.feedback.process(DeliveryEvent(kind=EventKind.DELIVERY, recipient=address, occurred_at=now,
                                            message_id=cc_id, event_id=event_id(EventKind.DELIVERY, address, cc_id),
                                            source="simulator"))
    assert client.post("/v1/suppressions", json={"email": copied, "reason": "hard_bounce"}).status_code == 201
    dropped = client.post("/v1/messages", json={**send, "to": f"third-{unique}@example.com", "cc": [copied]})
    assert dropped.status_code == 202 and dropped.json()["suppressed_recipients"][0]["address"].lower() == address
    dropped_id = dropped.json()["id"]
    # WHEN the address's data is exported
    data = client.get(f"/v1/contacts/{copied}/export").json()
    # THEN the three messages are there, showing of the other blind copies none, and its event too
    messages = {m["id"]: m for m in data["messages"]}
    assert set(messages) == {cc_id, bcc_id, dropped_id}
    assert [a.lower() for a in messages[cc_id]["cc"]] == [address] and messages[cc_id]["context"] == RESET
    assert [a.lower() for a in messages[bcc_id]["bcc"]] == [address] and other_bcc not in json.dumps(data)
    assert [(e["kind"], e["message_id"]) for e in data["events"]] == [("delivery", cc_id)]
    # WHEN it is erased
    report = client.delete(f"/v1/contacts/{copied}", params={"erase": "true"}).json()
    # THEN its three messages are scrubbed of it and its event deleted; no item mentions it any more
    assert report["messages_scrubbed"] == 3 and report["events"] == 1, report
    assert scan_for(services.table, address) == [] and scan_for(services.stats_table, address) == []
    # AND the messages keep their own recipients, the other blind copy included
    kept = {i: client.get(f"/v1/messages/{i}").json() for i in (cc_id, bcc_id, dropped_id)}
    assert kept[cc_id]["to"] == f"main-{unique}@example.com" and not kept[cc_id].get("cc")
    assert kept[bcc_id]["bcc"] == [other_bcc] and kept[bcc_id]["status"] == "scheduled"
    assert not kept[dropped_id].get("suppressed_recipients")
    # AND the export finds nothing more, and erasing again changes nothing
    after = client.get(f"/v1/contacts/{copied}/export").json()
    assert (after["messages"], after["events"]) == ([], [])
    assert client.delete(f"/v1/contacts/{copied}", params={"erase": "true"}).json()["messages_scrubbed"] == 0
