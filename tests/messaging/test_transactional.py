"""Transactional mail end to end: HTTP API → JetStream → worker process → real SMTP sink."""

from __future__ import annotations

import email.policy
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.api.limits import message_body_limits
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from stacktools import api_client


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}
WELCOME = {"login_url": "https://app.example.com/login"}


def status_of(client: TestClient, message_id: str) -> str:
    return str(client.get(f"/v1/messages/{message_id}").json()["status"])


def wait_status(client: TestClient, message_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
    wait_until(lambda: status_of(client, message_id) == status, timeout=timeout, what=f"{message_id} {status}")
    return dict(client.get(f"/v1/messages/{message_id}").json())


def test_welcome_email_arrives_with_both_parts(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"ada-{unique}@example.com"
    # WHEN a product backend sends a welcome email
    resp = client.post("/v1/messages", json={"template": "welcome", "to": to, "name": "Ada Lovelace",
                                             "context": WELCOME, "language": "de-AT"})
    assert resp.status_code == 202, resp.text
    message_id = resp.json()["id"]
    # THEN exactly one email reaches the sink, in German (de-AT falls back to de), with text and HTML
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="welcome email")
    msg = mailbox.message(mailbox.for_recipient(to)[0].id)
    assert msg["To"] is not None and "Ada Lovelace" in str(msg["To"])
    assert msg["Message-ID"].startswith(f"<{message_id}@")
    parts = {part.get_content_type(): part.get_content() for part in msg.walk() if not part.is_multipart()}
    assert set(parts) == {"text/plain", "text/html"}
    assert "Ada" in parts["text/plain"]
    record = wait_status(client, message_id, "sent")
    assert [h["status"] for h in record["history"]][:3] == ["queued", "sending", "sent"]


def test_idempotency_key_sends_once_and_conflicts_on_other_body(client: TestClient, mailbox: Mailbox,
                                                                 unique: str) -> None:
    to = f"idem-{unique}@example.com"
    body = {"template": "password_reset", "to": to, "context": {**RESET, "reset_url": "https://example.com/r/1"}}
    headers = {"Idempotency-Key": f"reset-{unique}"}
    first = client.post("/v1/messages", json=body, headers=headers)
    second = client.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    conflict = client.post("/v1/messages", json={**body, "context": {**RESET, "reset_url": "https://example.com/r/2"}},
                           headers=headers)
    assert conflict.status_code == 409
    wait_status(client, first.json()["id"], "sent")
    assert len(mailbox.for_recipient(to)) == 1


def test_redelivered_job_does_not_send_twice(client: TestClient, services: Services, mailbox: Mailbox,
                                             unique: str) -> None:
    to = f"redeliver-{unique}@example.com"
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                             "context": RESET})
    message_id = resp.json()["id"]
    wait_status(client, message_id, "sent")
    # WHEN the same message's job runs again (a redelivery, under another job id so the queue accepts it)
    services.queue.enqueue("send_message", queue="email_transactional", priority="high",
                           job_id=f"again-{unique}", message_id=message_id)
    # and a marker message sent after it has arrived (the worker has passed the redelivered job)
    marker = f"marker-{unique}@example.com"
    client.post("/v1/messages", json={"template": "password_reset", "to": marker,
                                      "context": RESET})
    wait_until(lambda: len(mailbox.for_recipient(marker)) == 1, timeout=15, what="marker")
    # THEN the first message still arrived once
    assert len(mailbox.for_recipient(to)) == 1


def test_temporary_failure_is_retried_and_delivered_once(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"defer1-{unique}@example.com"  # the sink answers 451 once for this address
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                             "context": RESET})
    record = wait_status(client, resp.json()["id"], "sent", timeout=30)
    assert len(mailbox.for_recipient(to)) == 1
    statuses = [h["status"] for h in record["history"]]
    assert statuses.count("sending") == 2 and "queued" in statuses[1:]
    assert record["attempts"] == 2


def test_permanent_failure_is_recorded_with_reason(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"reject-{unique}@example.com"  # the sink answers 550
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                             "context": RESET})
    record = wait_status(client, resp.json()["id"], "failed")
    assert "550" in record["error"]
    assert mailbox.for_recipient(to) == []


def sent_to(client: TestClient, to: str) -> list[dict[str, Any]]:
    return list(client.get("/v1/messages", params={"to": to}).json()["data"])


def test_a_send_missing_a_template_variable_is_refused_and_nothing_is_recorded(client: TestClient,
                                                                             unique: str) -> None:
    # WHEN a password reset is sent without the reset_url its template prints
    to = f"novar-{unique}@example.com"
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                             "context": {"expires_in_minutes": 5}})
    # THEN it is a 422 naming the template and the variable, and no message was recorded or queued
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert "password_reset" in resp.json()["detail"] and "'reset_url' is undefined" in resp.json()["detail"]
    # AND a marketing template is held to the same rule (the template's sample context does not fill in)
    welcome = client.post("/v1/messages", json={"template": "welcome", "to": to})
    assert welcome.status_code == 422 and "login_url" in welcome.json()["detail"]
    # AND a sequence whose later step needs a variable the context lacks is refused before any step is accepted
    steps = [{"template": "welcome"}, {"template": "password_reset", "delay": "P1D"}]
    enrol = client.post("/v1/sequences", json={"steps": steps, "to": to, "context": WELCOME})
    assert enrol.status_code == 422 and "reset_url" in enrol.json()["detail"]
    assert sent_to(client, to) == []
    # AND a variable the template only uses when it is defined may be left out
    name = f"optional-{unique}"
    html = "<p>Hi{% if coupon is defined %}, use {{ coupon }}{% endif %}</p>"
    assert client.post("/v1/templates", json={"name": name, "locale": "en", "subject": "Hi", "html": html,
                                              "sample_context": {"coupon": "X1"}}).status_code == 201
    assert client.post("/v1/messages", json={"template": name, "to": to}).status_code == 202
    assert len(sent_to(client, to)) == 1


def test_a_template_changed_before_a_scheduled_send_fails_the_message_not_the_worker(
        client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a message scheduled on a template that renders with its context
    name = f"changed-{unique}"
    body = {"name": name, "locale": "en", "subject": "Hi", "html": "<p>{{ a }}</p>", "sample_context": {"a": "x"}}
    assert client.post("/v1/templates", json=body).status_code == 201
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    resp = client.post("/v1/messages", json={"template": name, "to": f"changed-{unique}@example.com",
                                             "send_at": send_at.isoformat(), "context": {"a": "1"}})
    assert resp.status_code == 202, resp.text
    # WHEN a new version that needs another variable is saved before it is due
    changed = {**body, "html": "<p>{{ a }} {{ b }}</p>", "sample_context": {"a": "x", "b": "y"}}
    assert client.post("/v1/templates", json=changed).status_code == 201
    # THEN the message fails with the reason when it is due, and the worker goes on sending
    record = wait_status(client, resp.json()["id"], "failed", timeout=30)
    assert "'b' is undefined" in record["error"]
    to = f"after-{unique}@example.com"
    reset = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET})
    wait_status(client, reset.json()["id"], "sent")
    assert len(mailbox.for_recipient(to)) == 1


def test_bad_requests_get_clear_errors(client: TestClient, services: Services) -> None:
    unknown = client.post("/v1/messages", json={"template": "nope", "to": "a@example.com"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    invalid = client.post("/v1/messages", json={"template": "welcome", "to": "not-an-address"})
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "to"
    extra = client.post("/v1/messages", json={"template": "welcome", "to": "a@example.com", "bcc": "x@example.com"})
    assert extra.status_code == 422
    injected = client.post("/v1/messages", json={"template": "welcome", "to": "a@example.com", "name": "A\r\nBcc: x"})
    assert injected.status_code == 422
    limit = message_body_limits(services.settings)["/v1/messages"]  # room for attachments
    huge = client.post("/v1/messages", content=b"{" + b" " * (limit + 10) + b"}",
                       headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    not_json = client.post("/v1/messages", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert client.get("/v1/messages/msg_does_not_exist").status_code == 404


def test_every_route_requires_an_api_key(services: Services) -> None:
    app = create_app(services.settings, services=services)
    with TestClient(app) as anonymous:
        for method, path in [("post", "/v1/messages"), ("get", "/v1/messages/x"), ("get", "/v1/templates"),
                             ("post", "/v1/sequences"), ("delete", "/v1/sequences/x")]:
            resp = anonymous.request(method.upper(), path, json={})
            assert resp.status_code == 401, (method, path)
        bad = anonymous.get("/v1/templates", headers={"Authorization": "Bearer jm_000000000000_" + "x" * 43})
        assert bad.status_code == 401


def test_send_scoped_key_cannot_manage_templates(services: Services) -> None:
    _, token = services.api_keys.create("sender", scopes=["send"])
    app = create_app(services.settings, services=services)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/v1/templates").status_code == 403


def test_template_crud_and_preview(client: TestClient, unique: str) -> None:
    name = f"receipt-{unique}"
    created = client.post("/v1/templates", json={"name": name, "locale": "en", "subject": "Receipt {{ number }}",
                                                  "html": "<style>p{color:red}</style><p>Total {{ total }}</p>"})
    assert created.status_code == 201 and created.json()["version"] == 1
    updated = client.put(f"/v1/templates/{name}", json={"locale": "en", "subject": "Your receipt {{ number }}",
                                                         "html": "<p>Total: {{ total }}</p>"})
    assert updated.json()["version"] == 2
    assert [v["version"] for v in client.get(f"/v1/templates/{name}/versions").json()["data"]] == [1, 2]
    preview = client.post(f"/v1/templates/{name}/preview", json={"context": {"number": 7, "total": "<b>9</b>"}})
    assert preview.status_code == 200
    assert preview.json()["subject"] == "Your receipt 7"
    assert "&lt;b&gt;9&lt;/b&gt;" in preview.json()["html"]  # autoescaped
    unsafe = client.post("/v1/templates", json={"name": f"x{unique}", "locale": "en", "subject": "s",
                                                "html": "<p>{{ ''.__class__.__mro__ }}</p><script>x</script>"})
    assert unsafe.status_code == 422
    assert {p["field"] for p in unsafe.json()["errors"]} == {"html"}
    assert client.delete(f"/v1/templates/{name}").status_code == 204
    assert client.get(f"/v1/templates/{name}").status_code == 404


def test_scheduled_send_waits_for_its_time(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"later-{unique}@example.com"
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "send_at": send_at.isoformat(),
                                             "context": RESET})
    assert resp.json()["status"] == "scheduled"
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="scheduled mail")
    arrived = mailbox.for_recipient(to)[0].received_at
    assert arrived >= send_at.timestamp() - 0.05


def test_non_ascii_subject_and_name_survive(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"jose-{unique}@example.com"
    client.post("/v1/messages", json={"template": "welcome", "to": to, "name": "José Müller", "language": "de",
                                      "context": WELCOME})
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="mail")
    raw = mailbox.raw(mailbox.for_recipient(to)[0].id)
    parsed = message_from_bytes(raw, policy=email.policy.default)
    assert "José Müller" in str(parsed["To"])
    assert all(ord(c) < 128 for c in raw.split(b"\r\n\r\n", 1)[0].decode("ascii"))
