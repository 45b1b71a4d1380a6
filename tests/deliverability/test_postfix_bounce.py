"""Bounces from a real MTA: a private Debian Postfix bounces mail for an unknown local user with its own DSN,
first to a plain SMTP receiver, then, end to end, back to `jetmail bounce-server`: the API's message leaves a
real worker through the SMTP provider with a VERP return path, Postfix's DSN suppresses the address, and a
`message.bounced` webhook reaches a receiver."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.deliverability.bounces import verp_address
from jetmail.devstack.stack import StackState, free_port, stop_process, tcp_ready, wait_until
from postfix import LOCAL_DOMAIN, PostfixInstance, private_postfix, skip_reason
from stacktools import Isolated, ReceiverServer

BOUNCE_DOMAIN = "bounces.example.net"


class _Collect:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), bytes(envelope.content or b"")))
        return "250 OK"


@pytest.fixture
def receiver() -> Iterator[tuple[_Collect, int]]:
    handler = _Collect()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _send(postfix: PostfixInstance, *, mail_from: str, to: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "app@jetmail-test.invalid"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
        client.send_message(msg, from_addr=mail_from, to_addrs=[to])


def test_postfix_bounces_an_unknown_local_user_with_a_dsn(receiver: tuple[_Collect, int], unique: str) -> None:
    # GIVEN a private Postfix that relays mail for the bounce domain to a plain SMTP receiver
    handler, port = receiver
    with private_postfix(relay_domain=BOUNCE_DOMAIN, relay_to=("127.0.0.1", port)) as postfix:
        # WHEN it accepts mail for a user it does not have, sent from an address at the bounce domain
        sender = f"bounces+{unique}@{BOUNCE_DOMAIN}"
        _send(postfix, mail_from=sender, to=f"no-such-user-{unique}@{LOCAL_DOMAIN}", subject=unique)
        # THEN its own DSN comes back by SMTP to that address, with a null return path
        arrived = wait_until(lambda: handler.received, timeout=20, what="Postfix's DSN",)
        mail_from, rcpts, raw = arrived[0]
    assert (mail_from, rcpts) == ("<>", [sender]) or (mail_from, rcpts) == ("", [sender])
    report: Any = email.message_from_bytes(raw, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(part for part in report.walk() if part.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert f"no-such-user-{unique}@{LOCAL_DOMAIN}" in text
    assert "Status: 5.1.1" in text
    assert "Action: failed" in text


class _Webhooks:
    """An HTTP receiver on a free port keeping every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.events.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ReceiverServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Deployment:
    def __init__(self, iso: Isolated, postfix: PostfixInstance, bounce_log: Path) -> None:
        self.iso, self.postfix, self.bounce_log = iso, postfix, bounce_log


@pytest.fixture(scope="module")
def deployment(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Deployment]:
    """A stack of its own whose worker sends through the private Postfix, and `jetmail bounce-server` as the
    bounce domain's MX (Postfix's transport map points the domain at it)."""
    if reason := skip_reason():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("postfix-bounce")
    bounce_port = free_port()
    iso = Isolated(stack, root, webhook_allow_private=True, webhook_cache_s=0, bounce_domain=BOUNCE_DOMAIN)
    bounce_log = root / "bounce-server.log"
    try:
        with private_postfix(relay_domain=BOUNCE_DOMAIN, relay_to=("127.0.0.1", bounce_port)) as postfix:
            iso.env.update({"JETMAIL_SMTP_PORT": str(postfix.port), "JETMAIL_BOUNCE_DOMAIN": BOUNCE_DOMAIN,
                            "JETMAIL_WEBHOOK_CACHE_S": "0", "JETMAIL_WEBHOOK_ALLOW_PRIVATE": "true"})
            with bounce_log.open("wb") as out:
                server = subprocess.Popen(
                    [sys.executable, "-m", "jetmail.cli", "bounce-server", "--host", "127.0.0.1",
                     "--port", str(bounce_port)],
                    env=iso.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                iso.start_worker("webhooks")  # meanwhile the bounce server starts
                wait_until(tcp_ready(bounce_port), timeout=30, what="bounce server", proc=server, log=bounce_log)
                yield _Deployment(iso, postfix, bounce_log)
            finally:
                stop_process(server.pid)
    finally:
        iso.close()


def test_a_real_postfix_bounce_suppresses_the_address_and_fires_a_webhook(deployment: _Deployment,
                                                                          unique: str) -> None:
    iso = deployment.iso
    hooks = _Webhooks()
    try:
        with TestClient(create_app(iso.settings, services=iso.services),
                        headers={"Authorization": f"Bearer {iso.token}"}) as client:
            # GIVEN an endpoint for bounces
            resp = client.post("/v1/webhooks", json={"url": hooks.url, "events": ["message.bounced"]})
            assert resp.status_code == 201, resp.text
            # WHEN the API sends a message to a user the relay's domain does not have
            to = f"no-such-user-{unique}@{LOCAL_DOMAIN}"
            resp = client.post("/v1/messages", json={"template": "welcome", "to": to,
                                                     "context": {"login_url": "https://app.example.com/login"}})
            assert resp.status_code == 202, resp.text
            message_id = resp.json()["id"]
            # THEN Postfix accepts it from the worker, bounces it itself, and its DSN reaches the bounce server
            # at the message's return path, which suppresses the address as a hard bounce
            suppression = wait_until(lambda: iso.services.suppressions.get(to), timeout=30,
                                     what=f"suppression of {to}\n{deployment.postfix.log()[-3000:]}"
                                          f"\n{deployment.bounce_log.read_text(errors='replace')[-2000:]}")
            assert (suppression.reason, suppression.source) == ("hard_bounce", "smtp")
            return_path = verp_address(message_id, signer=iso.services.signer, domain=BOUNCE_DOMAIN)
            assert f"to=<{to}>" in deployment.postfix.log() and f"from=<{return_path}>" in deployment.postfix.log()
            # AND a message.bounced webhook reports it with Postfix's diagnostic
            bounced = wait_until(lambda: [e for e in hooks.events if e["data"].get("message_id") == message_id],
                                 timeout=30, what="the message.bounced webhook")
            assert bounced[0]["type"] == "message.bounced"
            assert bounced[0]["data"]["bounce_type"] == "Permanent"
            assert "5.1.1" in bounced[0]["data"]["diagnostic"] or "unknown user" in bounced[0]["data"]["diagnostic"]
    finally:
        hooks.close()
