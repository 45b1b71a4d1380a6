"""The dashboard's webhook pages: register an endpoint (its secret shown once), turn it off and on, rotate its
secret, delete it, and read its delivery log and replay from it, on a stack of its own with a real webhooks
worker delivering to a receiver served by the test."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.devstack.stack import StackState, wait_until
from jetmail.webhooks.endpoints import EndpointNotFound
from stacktools import Isolated, ReceiverServer

# fast retries and no endpoint cache, so a new endpoint gets the event a test causes at once
WORKER_ENV = {"JETMAIL_WEBHOOK_CACHE_S": "0", "JETMAIL_WEBHOOK_RETRY_BASE_S": "0.3",
              "JETMAIL_WEBHOOK_RETRY_MAX_S": "1", "JETMAIL_WEBHOOK_TIMEOUT_S": "3",
              "JETMAIL_WEBHOOK_ALLOW_PRIVATE": "true"}


class Receiver:
    """An HTTP server on a free port answering every POST with ``status`` and counting them."""

    def __init__(self) -> None:
        self.status = 500
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts += 1
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(f"answer {outer.status} <b>bold</b>".encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ReceiverServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def iso(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("dashboard-webhooks"), webhook_allow_private=True,
                   webhook_cache_s=0)
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
def browser(iso: Isolated) -> Iterator[TestClient]:
    """A browser logged in to the dashboard with the stack's admin key."""
    app = create_app(iso.settings, services=iso.services)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        form = client.get("/dashboard/login")
        resp = client.post("/dashboard/login", data={"api_key": iso.token, "csrf": csrf_of(form.text)})
        assert resp.status_code == 303, resp.text
        yield client


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has a CSRF field"
    return match.group(1)


def create(browser: TestClient, url: str, events: list[str], **fields: str) -> Any:
    csrf = csrf_of(browser.get("/dashboard/webhooks").text)
    return browser.post("/dashboard/webhooks", data={"csrf": csrf, "url": url, "events": events, **fields})


def endpoint_id_of(page: str) -> str:
    match = re.search(r"<h1>Webhook (whe_[0-9a-f]+)</h1>", page)
    assert match, page
    return match.group(1)


def secret_shown(page: str) -> str | None:
    match = re.search(r'<code id="secret">([^<]+)</code>', page)
    return html.unescape(match.group(1)) if match else None


def test_an_endpoint_is_created_with_its_secret_shown_once(browser: TestClient, iso: Isolated,
                                                           receiver: Receiver, unique: str) -> None:
    # WHEN the form registers an endpoint for two event types, filtered on a tag
    resp = create(browser, receiver.url, ["message.sent", "message.bounced"], tag=f"t-{unique}",
                  description=f"<ops {unique}>")
    # THEN the answer is the endpoint's page with its signing secret, the one the endpoint signs with
    assert resp.status_code == 200, resp.text
    endpoint_id = endpoint_id_of(resp.text)
    stored = iso.services.webhook_service.get(endpoint_id)
    assert secret_shown(resp.text) == stored.secret and stored.secret.startswith("whsec_")
    assert stored.events == ["message.sent", "message.bounced"] and stored.filter.tag == f"t-{unique}"
    # AND no later page shows the secret again
    listed = browser.get("/dashboard/webhooks")
    page = browser.get(f"/dashboard/webhooks/{endpoint_id}")
    assert listed.status_code == page.status_code == 200
    assert stored.secret not in listed.text and stored.secret not in page.text
    # AND the list names it with its URL, events and filter, the description escaped
    assert f'href="/dashboard/webhooks/{endpoint_id}"' in listed.text and receiver.url in listed.text
    assert "message.sent, message.bounced" in listed.text and f"tag = t-{unique}" in listed.text
    assert f"&lt;ops {unique}&gt;" in listed.text and f"<ops {unique}>" not in listed.text


def test_bad_or_forged_creations_make_nothing(browser: TestClient, iso: Isolated, receiver: Receiver,
                                              unique: str) -> None:
    before = len(iso.services.webhook_endpoints.list_all())
    # WHEN the form is sent with a URL that is not http(s), or without an event type
    for url, events in [(f"ftp://example.com/{unique}", ["message.sent"]), (receiver.url, [])]:
        resp = create(browser, url, events)
        # THEN the list page answers 422 with why, the form keeps what was typed
        assert resp.status_code == 422, resp.text
        assert 'role="alert"' in resp.text and "The endpoint was not created" in resp.text
        assert f'value="{url}"' in resp.text
    # WHEN it is sent without its CSRF token, or from another site THEN it is refused
    assert browser.post("/dashboard/webhooks", data={"url": receiver.url, "events": ["message.sent"]}
                        ).status_code == 403
    csrf = csrf_of(browser.get("/dashboard/webhooks").text)
    assert browser.post("/dashboard/webhooks", data={"csrf": csrf, "url": receiver.url, "events": ["message.sent"]},
                        headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # AND no endpoint was made by any of them
    assert len(iso.services.webhook_endpoints.list_all()) == before


def test_the_delivery_log_shows_attempts_and_replays_one_or_a_range(browser: TestClient, iso: Isolated,
                                                                    receiver: Receiver, unique: str) -> None:
    # GIVEN an endpoint for suppressions whose receiver answers 500
    receiver.status = 500
    endpoint_id = endpoint_id_of(create(browser, receiver.url, ["suppression.added"]).text)
    iso.services.suppressions.add(f"hooked-{unique}@example.com", reason="unsubscribed", source="test")

    def log_page() -> str:
        return str(browser.get(f"/dashboard/webhooks/{endpoint_id}").text)

    # WHEN the worker has tried it a few times THEN the endpoint's page lists each attempt: outcome,
    # status, latency and the response's excerpt (escaped)
    wait_until(lambda: log_page().count('class="outcome outcome-failed"') >= 2, timeout=30,
               what="two failed attempts in the delivery log")
    page = log_page()
    assert re.search(r'<td class="num">500</td>\s*<td class="num">[\d,]+ ms</td>', page)
    assert "answer 500 &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    event_id = re.findall(r'name="event_id" value="(evt_[0-9a-f]+)"', page)[0]
    # WHEN the receiver recovers and that delivery is replayed from its row
    receiver.status = 200
    resp = browser.post(f"/dashboard/webhooks/{endpoint_id}/replay", data={"csrf": csrf_of(page), "event_id": event_id})
    assert resp.status_code == 303 and resp.headers["location"] == f"/dashboard/webhooks/{endpoint_id}?replayed=1"
    assert "1 event(s) queued for delivery again" in browser.get(resp.headers["location"]).text

    # THEN a replayed attempt succeeds and shows in the log
    def replayed_ok() -> bool:
        attempts, _ = iso.services.webhook_service.attempts(endpoint_id, limit=100)
        return any(a.replay and a.outcome == "succeeded" for a in attempts)

    wait_until(replayed_ok, timeout=30, what="a replayed delivery that succeeds")
    assert "(replay)" in log_page() and 'class="outcome outcome-succeeded"' in log_page()
    # WHEN today's range is replayed THEN the event is queued again
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    posts = receiver.posts
    ranged = browser.post(f"/dashboard/webhooks/{endpoint_id}/replay", data={"csrf": csrf_of(page), "since": today})
    assert ranged.status_code == 303 and ranged.headers["location"].endswith("?replayed=1"), ranged.text
    wait_until(lambda: receiver.posts > posts, timeout=30, what="the range's delivery")
    # AND a bad range or an unknown event is an error page that replays nothing
    for data, status in [({"since": "yesterday"}, 422), ({"since": today, "until": "2000-01-01"}, 422), ({}, 422),
                         ({"event_id": "evt_nope"}, 404)]:
        bad = browser.post(f"/dashboard/webhooks/{endpoint_id}/replay", data={"csrf": csrf_of(page), **data})
        assert bad.status_code == status and "Nothing was replayed" in bad.text, (data, bad.text)
    assert browser.post("/dashboard/webhooks/whe_nope/replay", data={"csrf": csrf_of(page), "since": today}
                        ).status_code == 404
    assert browser.post(f"/dashboard/webhooks/{endpoint_id}/replay", data={"event_id": event_id}).status_code == 403


def test_disable_enable_rotate_and_delete(browser: TestClient, iso: Isolated, receiver: Receiver) -> None:
    store = iso.services.webhook_endpoints
    created = create(browser, receiver.url, ["campaign.started"])
    endpoint_id = endpoint_id_of(created.text)
    first_secret = secret_shown(created.text)
    csrf = csrf_of(created.text)
    base = f"/dashboard/webhooks/{endpoint_id}"
    # WHEN it is disabled THEN it is off, with the reason shown, and the button turns it back on
    resp = browser.post(f"{base}/disable", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == f"{base}?done=disabled"
    assert not store.get(endpoint_id).enabled
    page = browser.get(resp.headers["location"]).text
    assert "disabled in the dashboard" in page and f'action="{base}/enable"' in page
    assert browser.post(f"{base}/disable", data={"csrf": csrf}).headers["location"] == f"{base}?done=already-disabled"
    resp = browser.post(f"{base}/enable", data={"csrf": csrf})
    assert resp.status_code == 303 and store.get(endpoint_id).enabled
    assert store.get(endpoint_id).disabled_reason is None
    # WHEN the secret is rotated with an hour's grace THEN the answer shows the new one, the old keeps signing
    rotated = browser.post(f"{base}/rotate", data={"csrf": csrf, "grace_hours": "1"})
    assert rotated.status_code == 200, rotated.text
    endpoint = store.get(endpoint_id)
    assert secret_shown(rotated.text) == endpoint.secret != first_secret
    assert endpoint.signing_secrets() == [endpoint.secret, first_secret]
    assert endpoint.secret not in browser.get(base).text
    assert browser.post(f"{base}/rotate", data={"csrf": csrf, "grace_hours": "-1"}).status_code == 422
    # WHEN it is deleted THEN it is gone, and its page and forms answer 404
    resp = browser.post(f"{base}/delete", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/webhooks?done=deleted"
    with pytest.raises(EndpointNotFound):
        store.get(endpoint_id)
    assert browser.get(base).status_code == 404
    for action in ("enable", "disable", "rotate", "delete"):
        assert browser.post(f"{base}/{action}", data={"csrf": csrf}).status_code == 404, action
    # AND none of the forms acts without its token
    assert browser.post("/dashboard/webhooks/whe_x/delete", data={"csrf": "wrong"}).status_code == 403
    assert browser.get("/dashboard/webhooks", params={"cursor": "garbage"}).status_code == 422
