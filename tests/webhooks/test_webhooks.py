"""Outgoing webhooks end to end: a receiver served by the test, registered through the API, fed by a real
worker on a stack of its own (fast retries, a short endpoint cache), verified with ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from jetmail.devstack.stack import StackState, wait_until
from jetmail.messaging.messages import RawSubmission
from jetmail.queue import Queue
from jetmail.services import queue_config
from jetmail.webhooks import transport
from jetmail.webhooks.dispatch import Dispatcher, Policy
from jetmail.webhooks.endpoints import EndpointCache, EndpointStore
from jetmail.webhooks.events import WebhookEvent, event_id
from jetmail.webhooks.jobs import DeliverJob
from stacktools import Isolated, ReceiverServer

# no endpoint cache: each test's new endpoint gets the events it causes at once (production caches 10 s)
WORKER_ENV = {"JETMAIL_WEBHOOK_CACHE_S": "0", "JETMAIL_WEBHOOK_RETRY_BASE_S": "0.3",
              "JETMAIL_WEBHOOK_RETRY_MAX_S": "1", "JETMAIL_WEBHOOK_TIMEOUT_S": "3",
              "JETMAIL_WEBHOOK_ALLOW_PRIVATE": "true"}


class Receiver:
    """An HTTP server on a free port: records every POST, answers each path with the status set for it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.status: dict[str, int] = {}
        self.fail_once: set[str] = set()  # webhook ids answered 500 the first time they come
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    code = outer.status.get(self.path, 200)
                    if self.headers.get("webhook-id") in outer.fail_once:
                        outer.fail_once.discard(self.headers["webhook-id"])
                        code = 500
                self.send_response(code)
                self.end_headers()
                self.wfile.write(f"answer {code} ".encode() * 2000)  # more than the excerpt keeps

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ReceiverServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def on(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.received if p == path]

    def events(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.on(path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def iso(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("webhooks"), webhook_allow_private=True, webhook_cache_s=0)
    own.env.update(WORKER_ENV)
    own.start_worker("webhooks")
    yield own
    own.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture(scope="module")
def client(iso: Isolated) -> Iterator[TestClient]:
    yield from iso.client()


def register(client: TestClient, url: str, events: list[str], **extra: Any) -> dict[str, Any]:
    resp = client.post("/v1/webhooks", json={"url": url, "events": events, **extra})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    assert body["secret"].startswith("whsec_")
    return body


def suppress(client: TestClient, email: str) -> None:
    resp = client.post("/v1/suppressions", json={"email": email})
    assert resp.status_code == 201, resp.text


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(body, headers)
    return payload


def test_a_message_sends_queued_sent_and_bounced_signed_webhooks(client: TestClient, receiver: Receiver,
                                                                 unique: str) -> None:
    # GIVEN an endpoint for three message events
    endpoint = register(client, receiver.url("/messages"), ["message.queued", "message.sent", "message.bounced"])
    # WHEN a message goes to the SES simulator's bounce address
    to = f"bounce+{unique}@simulator.amazonses.com"
    resp = client.post("/v1/messages", json={"template": "welcome", "to": to,
                                             "context": {"login_url": "https://app.example.com/login"}})
    assert resp.status_code == 202, resp.text
    message_id = resp.json()["id"]

    def kinds() -> set[str]:
        return {e["type"] for e in receiver.events("/messages") if e["data"].get("message_id") == message_id}

    # THEN queued, sent and bounced arrive (in any order), each signed with the endpoint's secret
    wait_until(lambda: kinds() == {"message.queued", "message.sent", "message.bounced"}, timeout=30,
               what="queued, sent and bounced webhooks")
    by_type: dict[str, dict[str, Any]] = {}
    for headers, body in receiver.on("/messages"):
        payload = verified(endpoint["secret"], headers, body)
        assert headers["webhook-id"] == payload["id"]
        if payload["data"].get("message_id") == message_id:
            by_type[payload["type"]] = payload
    assert by_type["message.sent"]["data"]["to"] == to
    bounce = by_type["message.bounced"]["data"]
    assert bounce["bounce_type"] == "Permanent" and bounce["diagnostic"]
    assert by_type["message.queued"]["id"] == event_id("message.queued", message_id)  # stable: derived
    # AND every attempt is in the delivery log
    log = client.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()
    assert {a["event_id"] for a in log["data"]} >= {p["id"] for p in by_type.values()}
    assert all(a["outcome"] == "succeeded" and a["status_code"] == 200 for a in log["data"])
    assert all(len(a["response"]) <= transport.EXCERPT_BYTES for a in log["data"])

    # AND the message's timeline shows each delivery
    def delivered_in_timeline() -> set[str]:
        timeline = client.get(f"/v1/messages/{message_id}").json()["timeline"]
        return {e["detail"].split()[0] for e in timeline if e["event"] == "webhook"}

    wait_until(lambda: delivered_in_timeline() == {"message.queued", "message.sent", "message.bounced"},
               timeout=30, what="the webhook deliveries in the message's timeline")


def test_a_failing_receiver_is_retried_logged_and_replayed(client: TestClient, receiver: Receiver,
                                                           unique: str) -> None:
    # GIVEN a receiver that answers 500
    receiver.status["/failing"] = 500
    endpoint = register(client, receiver.url("/failing"), ["suppression.added"])
    since = datetime.now(UTC) - timedelta(seconds=1)
    suppress(client, f"failing-{unique}@example.com")

    def attempts() -> list[dict[str, Any]]:
        return list(client.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"])

    # THEN the delivery is retried with backoff, every attempt logged with its status and an excerpt
    wait_until(lambda: len(attempts()) >= 3, timeout=30, what="three failed attempts")
    logged = attempts()
    assert {a["outcome"] for a in logged} == {"failed"} and {a["status_code"] for a in logged} == {500}
    assert sorted(a["attempt"] for a in logged)[:3] == [1, 2, 3]
    assert logged[0]["response"].startswith("answer 500") and logged[0]["latency_ms"] is not None
    event = logged[0]["event_id"]
    # WHEN the receiver recovers and the event is replayed, by id and by time range
    receiver.status["/failing"] = 200
    one = client.post(f"/v1/webhooks/{endpoint['id']}/replay", json={"event_id": event})
    assert one.status_code == 202 and one.json()["replayed"] == [event]
    wait_until(lambda: any(a["replay"] and a["outcome"] == "succeeded" for a in attempts()), timeout=30,
               what="a replayed delivery that succeeds")
    ranged = client.post(f"/v1/webhooks/{endpoint['id']}/replay", json={"since": since.isoformat()})
    assert ranged.status_code == 202 and event in ranged.json()["replayed"]
    # AND bad replay requests are 4xx, not 500
    assert client.post(f"/v1/webhooks/{endpoint['id']}/replay", json={}).status_code == 422
    assert client.post(f"/v1/webhooks/{endpoint['id']}/replay", json={"event_id": "evt_nope"}).status_code == 404
    assert client.post("/v1/webhooks/whe_nope/replay", json={"event_id": event}).status_code == 404


def test_410_disables_the_endpoint(client: TestClient, receiver: Receiver, unique: str) -> None:
    receiver.status["/gone"] = 410
    endpoint = register(client, receiver.url("/gone"), ["suppression.added"])
    suppress(client, f"gone-{unique}@example.com")
    wait_until(lambda: not client.get(f"/v1/webhooks/{endpoint['id']}").json()["enabled"], timeout=30,
               what="endpoint disabled after a 410")
    assert "410" in client.get(f"/v1/webhooks/{endpoint['id']}").json()["disabled_reason"]
    # AND it can be turned back on
    again = client.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": True}).json()
    assert again["enabled"] and again["disabled_reason"] is None


def test_rotation_signs_with_both_secrets_during_the_grace(client: TestClient, receiver: Receiver,
                                                           unique: str) -> None:
    endpoint = register(client, receiver.url("/rotating"), ["suppression.added"])
    rotated = client.post(f"/v1/webhooks/{endpoint['id']}/rotate", json={"grace_hours": 1})
    assert rotated.status_code == 200 and rotated.json()["secret"] != endpoint["secret"]
    suppress(client, f"rotating-{unique}@example.com")
    wait_until(lambda: len(receiver.on("/rotating")) >= 1, timeout=30, what="a delivery after rotation")
    headers, body = receiver.on("/rotating")[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verified(rotated.json()["secret"], headers, body) == verified(endpoint["secret"], headers, body)
    # without a grace the old secret stops signing at once
    third = client.post(f"/v1/webhooks/{endpoint['id']}/rotate", json={"grace_hours": 0}).json()
    secret = client.get(f"/v1/webhooks/{endpoint['id']}/secret").json()
    assert secret["secret"] == third["secret"] and len(secret["previous_secrets_valid_until"]) == 1


def test_a_name_resolving_to_loopback_is_refused(iso: Isolated, client: TestClient, receiver: Receiver) -> None:
    # GIVEN the safety setting off (production's default) and an endpoint whose name resolves to 127.0.0.1
    endpoint = register(client, receiver.url("/private", host="localhost"), ["suppression.added"])
    dispatcher = Dispatcher(store=iso.services.webhook_endpoints, cache=iso.services.webhook_cache,
                            log=iso.services.webhook_log, queue=Queue(queue_config(iso.settings)),
                            policy=Policy(allow_private=False))
    event = WebhookEvent(id="evt_private", type="suppression.added", timestamp=datetime.now(UTC), data={})

    async def attempt() -> float | None:
        try:
            return await dispatcher.deliver(endpoint["id"], event, attempt=1, first_at=datetime.now(UTC))
        finally:
            await dispatcher.close()

    # WHEN it is delivered THEN nothing is sent, nothing retried, and the refusal is logged
    assert asyncio.run(attempt()) is None
    assert receiver.on("/private") == []
    log = client.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"]
    assert log[0]["outcome"] == "refused" and "127.0.0.1" in log[0]["error"]
    with pytest.raises(transport.UnsafeDestination):
        asyncio.run(transport.resolve("localhost", 80, allow_private=False))


def test_a_day_of_failures_disables_and_alerts(iso: Isolated, client: TestClient, receiver: Receiver,
                                              caplog: pytest.LogCaptureFixture) -> None:
    receiver.status["/down"] = 503
    endpoint = register(client, receiver.url("/down"), ["suppression.added"])
    dispatcher = Dispatcher(store=iso.services.webhook_endpoints, cache=iso.services.webhook_cache,
                            log=iso.services.webhook_log, queue=Queue(queue_config(iso.settings)),
                            policy=Policy(allow_private=True))
    event = WebhookEvent(id="evt_down", type="suppression.added", timestamp=datetime.now(UTC), data={})
    alerts: list[str] = []
    dispatcher.alert = alerts.append

    async def attempt(first_at: datetime) -> float | None:
        return await dispatcher.deliver(endpoint["id"], event, attempt=2, first_at=first_at)

    async def both() -> tuple[float | None, float | None]:
        try:
            return await attempt(datetime.now(UTC)), await attempt(datetime.now(UTC) - timedelta(days=1, seconds=1))
        finally:
            await dispatcher.close()

    retry, last = asyncio.run(both())
    assert retry is not None and 0 < retry <= 2 * 5.0 * 1.25  # the second attempt's backoff, with jitter
    assert last is None
    assert not client.get(f"/v1/webhooks/{endpoint['id']}").json()["enabled"]
    assert len(alerts) == 1 and endpoint["id"] in alerts[0]


def test_management_routes_and_cli(iso: Isolated, client: TestClient, receiver: Receiver) -> None:
    endpoint = register(client, receiver.url("/managed"), ["campaign.started"],
                        filter={"category": "marketing"}, description="ops")
    page = client.get("/v1/webhooks", params={"limit": 1})
    assert page.status_code == 200 and set(page.json()) == {"data", "next_cursor"}
    assert "secret" not in page.json()["data"][0]
    assert client.get("/v1/webhooks", params={"cursor": "nonsense"}).status_code == 422
    assert client.post("/v1/webhooks", json={"url": "ftp://example.com/x"}).status_code == 422
    assert client.post("/v1/webhooks", json={"url": receiver.url("/x"), "events": ["nope"]}).status_code == 422
    updated = client.patch(f"/v1/webhooks/{endpoint['id']}", json={"events": ["campaign.paused"]}).json()
    assert updated["events"] == ["campaign.paused"] and updated["filter"]["category"] == "marketing"
    listed = subprocess.run([sys.executable, "-m", "jetmail.cli", "webhooks", "list"], env=iso.env,
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent)
    assert listed.returncode == 0, listed.stderr
    assert endpoint["id"] in listed.stdout
    assert client.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
    assert client.get(f"/v1/webhooks/{endpoint['id']}").status_code == 404


def test_a_campaign_emits_its_transitions_and_one_sent_per_recipient(iso: Isolated, client: TestClient,
                                                                    receiver: Receiver, unique: str) -> None:
    # GIVEN a list of three and a campaign, and an endpoint filtered on that campaign
    list_id = client.post("/v1/lists", json={"name": f"hooks-{unique}"}).json()["id"]
    rows = "\n".join(json.dumps({"email": f"c{i}-{unique}@example.com"}) for i in range(3))
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=rows).status_code == 200
    context = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
               "docs_url": "https://docs.example.com/"}
    campaign = client.post("/v1/campaigns", json={"name": f"hooks-{unique}", "template": "getting_started",
                                                  "context": context, "audience": [{"list_id": list_id}]})
    assert campaign.status_code == 201, campaign.text
    campaign_id = campaign.json()["id"]
    endpoint = register(client, receiver.url("/campaign"), ["campaign.started", "campaign.finished", "message.sent"],
                        filter={"campaign_id": campaign_id})
    other = register(client, receiver.url("/other-campaign"), ["message.sent"], filter={"campaign_id": "cmp_other"})
    # WHEN it is sent
    assert client.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

    def kinds() -> list[str]:
        return sorted(e["type"] for e in receiver.events("/campaign"))

    # THEN the endpoint gets started, a sent per recipient and (once the scheduler's tick sees every batch
    # done) finished; the other campaign's endpoint gets nothing
    wait_until(lambda: kinds() == ["campaign.started"] + ["message.sent"] * 3, timeout=60, what="started and sent")
    wait_until(lambda: iso.services.campaigns.finish_if_done(campaign_id), timeout=30, what="campaign finished")
    wait_until(lambda: kinds() == ["campaign.finished", "campaign.started"] + ["message.sent"] * 3, timeout=60,
               what="the campaign's webhooks")
    sent = [e for e in receiver.events("/campaign") if e["type"] == "message.sent"]
    assert {e["data"]["to"] for e in sent} == {f"c{i}-{unique}@example.com" for i in range(3)}
    assert all(e["data"]["campaign_id"] == campaign_id and e["data"]["category"] == "marketing" for e in sent)
    for headers, body in receiver.on("/campaign"):
        verified(endpoint["secret"], headers, body)
    assert receiver.on("/other-campaign") == [] and other["id"]


def test_a_message_submitted_over_smtp_emits_queued_per_recipient(iso: Isolated, client: TestClient,
                                                                 receiver: Receiver, unique: str) -> None:
    # GIVEN an endpoint for queued messages
    endpoint = register(client, receiver.url("/smtp"), ["message.queued"])
    # WHEN a message the SMTP server accepted for two recipients is recorded (what `jetmail smtp-server` does)
    recipients = [f"smtp-a-{unique}@example.com", f"smtp-b-{unique}@example.com"]
    ids = [f"msg_smtp{unique}{n}" for n in range(2)]
    iso.services.messages.submit_raw(RawSubmission(message_ids=ids, recipients=recipients,
                                                   mail_from="app@example.com", raw_ref=f"raw-{unique}",
                                                   tags=["smtp"], metadata={"ticket": "42"}))

    # THEN each recipient's message sends one signed queued webhook with the submission's tags and metadata
    def queued() -> dict[str, dict[str, Any]]:
        found = {}
        for headers, body in receiver.on("/smtp"):
            payload = verified(endpoint["secret"], headers, body)
            if payload["data"].get("message_id") in ids:
                found[payload["data"]["message_id"]] = payload
        return found

    def both() -> dict[str, dict[str, Any]] | None:
        found = queued()
        return found if len(found) == 2 else None

    got = wait_until(both, timeout=30, what="two queued webhooks")
    assert {p["data"]["to"] for p in got.values()} == set(recipients)
    assert all(p["data"]["tags"] == ["smtp"] and p["data"]["metadata"] == {"ticket": "42"} for p in got.values())


def test_a_fan_out_delivers_an_endpoints_events_in_one_job_and_retries_a_failure_alone(
        iso: Isolated, client: TestClient, receiver: Receiver, unique: str) -> None:
    # GIVEN an endpoint, and three events for it of which the receiver answers the second 500 once
    endpoint = register(client, receiver.url("/batched"), ["message.complained"])
    now = datetime.now(UTC)
    events = [WebhookEvent(id=event_id("message.complained", unique, n), type="message.complained", timestamp=now,
                           data={"message_id": f"msg_batched{unique}{n}", "to": f"batched-{n}-{unique}@example.com"})
              for n in range(3)]
    failing = events[1].id
    receiver.fail_once.add(failing)

    async def fan_out() -> int:
        async with Queue(queue_config(iso.settings)) as queue:
            dispatcher = Dispatcher(store=iso.services.webhook_endpoints, cache=iso.services.webhook_cache,
                                    log=iso.services.webhook_log, queue=queue, policy=Policy(allow_private=True))
            try:
                return await dispatcher.fan_out(events)
            finally:
                await dispatcher.close()

    # WHEN they are fanned out (what the worker does with an emitted job)
    assert asyncio.run(fan_out()) == 1  # one delivery job for the endpoint's three events

    def attempts() -> list[dict[str, Any]]:
        return list(client.get(f"/v1/webhooks/{endpoint['id']}/deliveries").json()["data"])

    # THEN the worker delivers each event, the failed one again alone, until it succeeds
    wait_until(lambda: len(attempts()) == 4, timeout=30, what="three attempts and one retry")
    logged = sorted((a["event_id"], a["attempt"], a["outcome"]) for a in attempts())
    assert logged == sorted([(events[0].id, 1, "succeeded"), (failing, 1, "failed"), (failing, 2, "succeeded"),
                             (events[2].id, 1, "succeeded")])
    received = [h["webhook-id"] for h, _ in receiver.on("/batched")]
    assert sorted(received) == sorted([events[0].id, failing, failing, events[2].id])
    for headers, body in receiver.on("/batched"):  # each event its own signed POST
        assert verified(endpoint["secret"], headers, body)["id"] == headers["webhook-id"]
    # AND every event is kept for a replay, and a repeated fan-out publishes nothing new
    assert {e.id for e in iso.services.webhook_log.events(endpoint["id"], [e.id for e in events])} == \
        {e.id for e in events}
    assert asyncio.run(fan_out()) == 0


def test_emitting_reads_no_table_and_knows_endpoints_once_read(iso: Isolated, client: TestClient,
                                                               receiver: Receiver) -> None:
    # GIVEN an endpoint list cached for a minute, read for the first time
    register(client, receiver.url("/cached"), ["message.delivered"])
    cache = EndpointCache(EndpointStore(iso.services.table), ttl_s=60)
    assert cache.wanted() is None  # not known yet: the emitter sends everything, the fan-out decides
    wanted = wait_until(cache.wanted, timeout=10, what="the endpoint list read in the background")
    assert "message.delivered" in wanted
    # WHEN the send path asks again and again THEN no request reaches the table
    before = iso.services.table.requests
    assert all(cache.wanted() == wanted for _ in range(50))
    assert iso.services.table.requests == before


def test_a_delivery_job_enqueued_with_one_event_still_runs() -> None:
    # GIVEN a job in the stream from before jobs carried several events WHEN a worker reads it
    event = WebhookEvent(id="evt_old_shape", type="suppression.added", timestamp=datetime.now(UTC), data={})
    job = DeliverJob.model_validate({"endpoint_id": "whe_old", "event": event.model_dump(mode="json")})
    # THEN it is a job of that one event, from its first attempt
    assert job.events == [event] and job.attempt == 1 and job.first_at is None
