"""`jetmail.client` against the real API served over HTTP by uvicorn, on the local stack."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook

from jetmail.cli import main
from jetmail.client import (
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    NotFound,
    RateLimited,
    RetryPolicy,
    WebhookVerificationError,
    attachment,
    verify_webhook,
)
from jetmail.config import get_settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until, wait_until_async
from stacktools import ReceiverServer

if TYPE_CHECKING:
    from jetmail.services import Services

WELCOME = {"login_url": "https://app.example.com/login"}


def test_send_with_an_attachment_reads_back_and_reaches_the_sink(
        api: Client, email_worker: subprocess.Popen[bytes], mailbox: Mailbox, tmp_path: Path, unique: str) -> None:
    to = f"sdk-{unique}@example.com"
    invoice = tmp_path / "invoice.pdf"
    invoice.write_bytes(b"%PDF-1.4 sdk test")
    # WHEN an application sends inline content with a copy, headers, metadata, tags and two attachments
    sent = api.send(to, subject="Invoice {{ n }}", html="<p>Invoice {{ n }}</p>", text="Invoice {{ n }}",
                    context={"n": 7}, cc=[f"sdk-cc-{unique}@example.com"], headers={"X-Order": "7"},
                    metadata={"order": "7"}, tags=["sdk"],
                    attachments=[attachment(invoice), attachment(b"a,b\n", filename="rows.csv")])
    assert sent["status"] == "queued" and sent["id"].startswith("msg_")
    # THEN the API gives it back with everything it was sent with
    got = api.get_message(sent["id"])
    assert got["metadata"] == {"order": "7"} and got["tags"] == ["sdk"] and got["headers"] == {"X-Order": "7"}
    assert sorted(a["filename"] for a in got["attachments"]) == ["invoice.pdf", "rows.csv"]
    # AND the worker delivers it with the files
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=20, what="sdk message at the sink")
    msg = mailbox.message(mailbox.for_recipient(to)[0].id)
    assert msg["Subject"] == "Invoice 7" and msg["X-Order"] == "7"
    assert {part.get_filename() for part in msg.walk() if part.get_filename()} == {"invoice.pdf", "rows.csv"}


def test_every_send_carries_an_idempotency_key_and_a_given_one_replays(api: Client, unique: str) -> None:
    to = f"sdk-idem-{unique}@example.com"
    # GIVEN two sends of the same body without a key: each gets its own, so both are new messages
    first = api.send(to, template="welcome", context={**WELCOME, "name": "A"})
    second = api.send(to, template="welcome", context={**WELCOME, "name": "A"})
    assert first["id"] != second["id"]
    # WHEN the caller gives the key, the same body again is the same message
    key = f"order-{unique}"
    assert api.send(to, template="welcome", context=WELCOME, idempotency_key=key)["id"] == \
        api.send(to, template="welcome", context=WELCOME, idempotency_key=key)["id"]
    # AND a different body under the key is a 409 problem
    with pytest.raises(ApiError) as refused:
        api.send(to, template="welcome", context={**WELCOME, "name": "B"}, idempotency_key=key)
    assert refused.value.status == 409 and refused.value.slug == "idempotency-conflict"


def test_send_batch_gives_one_result_per_message(api: Client, unique: str) -> None:
    from jetmail.client import message

    result = api.send_batch([message(f"sdk-b1-{unique}@example.com", template="welcome", context=WELCOME),
                             message(f"sdk-b2-{unique}@example.com", template="no-such-template"),
                             message(f"sdk-b3-{unique}@example.com", template="welcome")])
    assert result["accepted"] == 1 and [item["status"] for item in result["data"]] == [202, 404, 422]
    assert "login_url" in result["data"][2]["problem"]["detail"]


def test_problems_are_raised_as_typed_errors(api: Client, api_url: str) -> None:
    with pytest.raises(NotFound) as missing:
        api.get_message("msg_doesnotexist")
    assert missing.value.status == 404 and missing.value.slug == "message-not-found"
    with pytest.raises(BadRequest) as invalid:
        api.send("not-an-address", template="welcome")
    assert invalid.value.status == 422 and invalid.value.slug == "validation-error"
    assert [e["field"] for e in invalid.value.errors] == ["to"]
    with Client(api_url, "jm_wrong") as stranger, pytest.raises(ApiError) as denied:
        stranger.get_message("msg_x")
    assert denied.value.status == 401


def test_iter_suppressions_follows_next_cursor_over_pages(api: Client, unique: str) -> None:
    emails = {f"sdk-supp-{i}-{unique}@example.com" for i in range(5)}
    for email in emails:
        assert api.add_suppression(email, reason="manual")["email"] == email
    # WHEN the list is read two at a time
    first = api.list_suppressions(limit=2)
    assert len(first["data"]) == 2 and first["next_cursor"]
    seen = [item["email"] for item in api.iter_suppressions(limit=2)]
    # THEN every entry comes once, across pages
    assert emails <= set(seen) and len(seen) == len(set(seen))
    for email in emails:
        api.delete_suppression(email)
    with pytest.raises(NotFound):
        api.get_suppression(next(iter(emails)))


def test_contacts_lists_templates_and_campaigns(api: Client, unique: str) -> None:
    made = api.create_list(f"sdk-{unique}")
    email = f"sdk-contact-{unique}@example.com"
    assert api.upsert_contact(email, name="Ada", lists={made["id"]: "subscribed"})["email"] == email
    report = api.import_contacts(made["id"], f"email,name\nsdk-imp-{unique}@example.com,Bo\n".encode())
    assert report["imported"] == 1, report
    assert {m["email"] for m in api.iter_members(made["id"], limit=1)} >= {email}
    assert made["id"] in {item["id"] for item in api.iter_lists()}
    api.put_template(f"sdk-{unique}", subject="Hi", html="<p>Hi</p><p>{{ unsubscribe_url }}</p>",
                     category="transactional")
    assert api.get_template(f"sdk-{unique}")["subject"] == "Hi"
    assert f"sdk-{unique}" in {t["name"] for t in api.iter_templates()}
    draft = api.create_campaign({"name": f"sdk-{unique}", "template": "welcome",
                                 "audience": [{"list_id": made["id"]}]})
    assert draft["state"] == "draft" and api.get_campaign(draft["id"])["id"] == draft["id"]
    assert draft["id"] in {c["id"] for c in api.iter_campaigns()}
    assert api.cancel_campaign(draft["id"])["state"] == "cancelled"
    api.delete_contact(email)
    with pytest.raises(NotFound):
        api.get_contact(email)


def test_the_async_client_sends_and_pages(api_url: str, api_token: str, email_worker: subprocess.Popen[bytes],
                                          unique: str) -> None:
    async def run() -> tuple[dict[str, Any], list[str]]:
        async with AsyncClient(api_url, api_token) as api:
            sent = await api.send(f"sdk-async-{unique}@example.com", template="password_reset",
                                  context={"reset_url": "https://example.com/r/sdk", "expires_in_minutes": 5})

            async def delivered() -> dict[str, Any] | None:
                got = await api.get_message(sent["id"])
                return got if got["status"] == "sent" else None

            got = await wait_until_async(delivered, timeout=30, what="the async client's message sent")
            names = [t["name"] async for t in api.iter_templates()]
            return got, names

    got, names = asyncio.run(run())
    assert got["to"] == f"sdk-async-{unique}@example.com" and "password_reset" in names


class _Flaky(BaseHTTPRequestHandler):
    """The test's stand-in for a busy server: 429 with Retry-After: 1, then 200."""

    calls: list[float] = []

    def do_GET(self) -> None:
        self.calls.append(time.monotonic())
        if len(self.calls) == 1:
            body, status, extra = b'{"type":"https://jetmail.dev/problems/rate-limited","title":"Too Many ' \
                                  b'Requests","status":429,"detail":"slow down"}', 429, {"Retry-After": "1"}
        else:
            body, status, extra = json.dumps({"id": "msg_1", "status": "sent"}).encode(), 200, {}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_429_is_retried_after_the_servers_retry_after() -> None:
    server = ReceiverServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", "jm_test") as api:
            assert api.get_message("msg_1")["status"] == "sent"
        first, second = _Flaky.calls
        assert second - first >= 0.95
    finally:
        server.shutdown()


def test_the_real_apis_429_becomes_rate_limited_with_retry_after(api_url: str, services: Services,
                                                                  unique: str) -> None:
    _, token = services.api_keys.create(f"sdk-throttled-{unique}", scopes=["admin"], rate_per_minute=1)
    with Client(api_url, token, retry=RetryPolicy(attempts=1)) as api:
        with pytest.raises(NotFound):
            api.get_message("msg_doesnotexist")
        with pytest.raises(RateLimited) as limited:
            api.get_message("msg_doesnotexist")
    assert limited.value.status == 429 and limited.value.retry_after is not None and limited.value.retry_after > 0


def test_verify_webhook_accepts_a_signed_delivery_and_refuses_a_tampered_one() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    body = json.dumps({"id": "evt_1", "type": "message.sent", "data": {"message_id": "msg_1"}}).encode()
    now = datetime.now(UTC)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign("evt_1", now, body)}
    assert verify_webhook(body, headers, secret)["type"] == "message.sent"
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(body.replace(b"msg_1", b"msg_2"), headers, secret)
    old = now - timedelta(minutes=10)
    stale = {**headers, "webhook-timestamp": str(int(old.timestamp())),
             "webhook-signature": Webhook(secret).sign("evt_1", old, body)}
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(body, stale, secret)


def test_webhook_endpoints_through_the_client(api: Client, unique: str) -> None:
    created = api.create_webhook(f"http://127.0.0.1:9/{unique}", events=["message.sent"])
    assert created["secret"].startswith("whsec_")
    rotated = api.rotate_webhook_secret(created["id"], grace_hours=1)
    assert rotated["secret"] != created["secret"]
    assert created["id"] in {e["id"] for e in api.iter_webhooks(limit=1)}
    api.delete_webhook(created["id"])


def test_jetmail_send_with_api_url_reaches_the_sink(cli: CliRunner, api_url: str, email_worker: subprocess.Popen[bytes],
                                                    mailbox: Mailbox, tmp_path: Path, unique: str) -> None:
    to = f"sdk-cli-{unique}@example.com"
    (tmp_path / "body.html").write_text("<p>Hi {{ who }}</p>", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("notes", encoding="utf-8")
    result = cli.invoke(main, ["send", "--api-url", api_url, "--to", to, "--subject", "Remote {{ who }}",
                               "--html-file", str(tmp_path / "body.html"), "--var", "who=Ada",
                               "--attach", str(tmp_path / "notes.txt"), "--tag", "remote", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tags"] == ["remote"]
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=20, what="remote cli message")
    msg = mailbox.message(mailbox.for_recipient(to)[0].id)
    assert msg["Subject"] == "Remote Ada"
    assert [p.get_filename() for p in msg.walk() if p.get_filename()] == ["notes.txt"]


def test_remote_suppressions_and_campaigns_and_their_errors(cli: CliRunner, api_url: str, api: Client,
                                                            unique: str) -> None:
    email = f"sdk-cli-supp-{unique}@example.com"
    env = {"JETMAIL_API_URL": api_url}
    added = cli.invoke(main, ["suppressions", "add", email], env=env)
    assert added.exit_code == 0 and f"suppressed {email} (manual)" in added.output, added.output
    assert api.get_suppression(email)["source"].startswith("api:")
    listed = cli.invoke(main, ["suppressions", "export"], env=env)
    assert listed.exit_code == 0 and email in listed.output
    assert cli.invoke(main, ["suppressions", "remove", email], env=env).exit_code == 0
    gone = cli.invoke(main, ["suppressions", "remove", email], env=env)
    assert gone.exit_code == 1 and "not suppressed" in gone.output
    missing = cli.invoke(main, ["campaign", "pause", "cmp_doesnotexist"], env=env)
    assert missing.exit_code == 1 and "404" in missing.output and "Traceback" not in missing.output
    keyless = cli.invoke(main, ["campaign", "list"], env={**env, "JETMAIL_API_KEY": ""})
    assert keyless.exit_code == 2 and "JETMAIL_API_KEY" in keyless.output


def test_the_same_commands_without_api_url_use_the_local_services(app_env: dict[str, str], services: Services,
                                                                    api: Client, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    unique: str) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("JETMAIL_")]:
        monkeypatch.delenv(key)
    get_settings.cache_clear()
    local = CliRunner(env=app_env)
    email = f"sdk-local-supp-{unique}@example.com"
    try:
        added = local.invoke(main, ["suppressions", "add", email])
        assert added.exit_code == 0 and "pending message(s) cancelled" in added.output, added.output
        # the API sees what the local command wrote: the same table
        assert api.get_suppression(email)["source"] == "cli"
        assert email in local.invoke(main, ["suppressions", "list", "--limit", "500"]).output
        assert local.invoke(main, ["suppressions", "remove", email]).exit_code == 0
        listed = local.invoke(main, ["campaign", "list"])
        assert listed.exit_code == 0, listed.output
    finally:
        get_settings.cache_clear()
