"""SMTP submission (`jetmail smtp-server`) end to end: a real client over TLS → the server process → message
records and jobs → the worker process → the real SMTP sink; and every refusal with its code."""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, free_port, stop_process, tcp_ready, wait_until
from jetmail.messaging.smtp_server import self_signed
from jetmail.services import Services
from stacktools import stack_env

MAX_BYTES = 64 * 1024
MAX_RECIPIENTS = 5
TIMEOUT_S = 3
MAX_CONNECTIONS = 6


@dataclass
class Server:
    port: int  # STARTTLS
    tls_port: int  # implicit TLS
    cert: str


@pytest.fixture(scope="module")
def server(stack: StackState, services: Services, email_worker: subprocess.Popen[bytes],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("submission")
    cert, key = self_signed(str(folder))
    port, tls_port = free_port(), free_port()
    env = stack_env(stack, JETMAIL_SUBMISSION_HOST="127.0.0.1", JETMAIL_SUBMISSION_PORT=str(port),
                    JETMAIL_SUBMISSION_TLS_PORT=str(tls_port), JETMAIL_SUBMISSION_CERT_FILE=cert,
                    JETMAIL_SUBMISSION_KEY_FILE=key, JETMAIL_SUBMISSION_MAX_BYTES=str(MAX_BYTES),
                    JETMAIL_SUBMISSION_MAX_RECIPIENTS=str(MAX_RECIPIENTS), JETMAIL_SUBMISSION_TIMEOUT_S=str(TIMEOUT_S),
                    JETMAIL_SUBMISSION_MAX_CONNECTIONS_PER_IP=str(MAX_CONNECTIONS), JETMAIL_API_KEY_CACHE_S="1")
    log = folder / "smtp-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jetmail.cli", "smtp-server"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: tcp_ready(port)() and tcp_ready(tls_port)(), timeout=30, what="smtp-server", proc=proc, log=log)
    yield Server(port=port, tls_port=tls_port, cert=cert)
    stop_process(proc.pid)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def send_key(services: Services) -> str:
    _, token = services.api_keys.create("smtp-submission", scopes=["send"])
    return token


def context(server: Server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=server.cert)
    ctx.check_hostname = False  # the certificate names localhost; we connect to 127.0.0.1
    return ctx


def starttls(server: Server, token: str | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    client.starttls(context=context(server))
    if token is not None:
        client.login("anything", token)
    return client


def message(sender: str, to: str, subject: str, *, extra: str = "", body: str = "Hello over SMTP.") -> bytes:
    return (f"From: App <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n").encode()


def reply(client: smtplib.SMTP, command: str) -> tuple[int, str]:
    code, text = client.docmd(command)
    return code, text.decode()


# ---- delivery through the pipeline

def test_starttls_auth_plain_delivers_with_jetmail_headers(server: Server, send_key: str, services: Services,
                                                          mailbox: Mailbox, unique: str) -> None:
    to = f"smtp-{unique}@example.com"
    # GIVEN a message with jetmail's instruction headers, its own Message-ID and a Bcc
    raw = message("app@example.com", to, "Receipt", extra=(
        f"Message-ID: <order-{unique}@shop.example.com>\r\nBcc: hidden@example.com\r\n"
        "X-Jetmail-Tags: receipt, shop\r\nX-Jetmail-Metadata: {\"order\": \"1234\"}\r\n"
        "X-Jetmail-Category: transactional\r\n"))
    # WHEN an application sends it with smtplib: STARTTLS, AUTH PLAIN with the API key as the password
    with starttls(server) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features.get("auth", "") and "LOGIN" in client.esmtp_features["auth"]
        client.login("anything", send_key)
        client.mail("app@example.com")
        client.rcpt(to)
        code, text = client.data(raw)
    # THEN the reply carries the message id
    assert code == 250, text
    message_id = text.decode().rsplit(" ", 1)[1]
    assert message_id.startswith("msg_")
    # AND the mail reaches the sink with jetmail's id, its own Message-ID, and no instruction header
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=20, what="submitted mail")
    msg = mailbox.message(mailbox.for_recipient(to)[0].id)
    assert msg["X-Jetmail-Message-Id"] == message_id
    assert msg["Message-ID"] == f"<order-{unique}@shop.example.com>"
    assert msg["Date"] is not None
    for header in ("Bcc", "X-Jetmail-Tags", "X-Jetmail-Metadata", "X-Jetmail-Category"):
        assert msg[header] is None, header
    assert "Hello over SMTP." in msg.get_content()
    # AND its record went queued → sending → sent, with the tags and metadata
    wait_until(lambda: services.messages.get(message_id).status == "sent", timeout=10, what="sent")
    record = services.messages.get(message_id)
    assert record.kind == "raw" and record.tags == ["receipt", "shop"] and record.metadata == {"order": "1234"}
    assert [h.status for h in record.history] == ["queued", "sending", "sent"]


def test_implicit_tls_auth_login_many_recipients(server: Server, send_key: str, mailbox: Mailbox,
                                                 services: Services, unique: str) -> None:
    rcpts = [f"many{i}-{unique}@example.com" for i in range(3)]
    # WHEN a client sends one message to three recipients on the implicit-TLS port with AUTH LOGIN
    with smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=context(server), timeout=10) as client:
        client.ehlo()
        client.user, client.password = "key", send_key
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235
        client.mail("app@example.com")
        for rcpt in rcpts:
            client.rcpt(rcpt)
        code, text = client.data(message("app@example.com", ", ".join(rcpts), "Team news"))
    # THEN the multi-line reply names one message id per recipient
    assert code == 250
    ids = [line.strip() for line in text.decode().splitlines()[1:]]
    assert len(ids) == 3 and all(i.startswith("msg_") for i in ids), text
    # AND each recipient gets one copy, its jetmail id in it, and a Message-ID jetmail assigned
    wait_until(lambda: all(len(mailbox.for_recipient(r)) == 1 for r in rcpts), timeout=20, what="three copies")
    got = {r: mailbox.message(mailbox.for_recipient(r)[0].id) for r in rcpts}
    assert [got[r]["X-Jetmail-Message-Id"] for r in rcpts] == ids
    assert {got[r]["Message-ID"] for r in rcpts} == {f"<{ids[0]}@example.com>"}


def test_suppressed_recipient_is_not_mailed(server: Server, send_key: str, services: Services, mailbox: Mailbox,
                                            unique: str) -> None:
    to = f"gone-{unique}@example.com"
    services.suppressions.add(to, reason="manual")
    # WHEN mail is submitted for a suppressed address, THEN it is accepted (the pipeline decides)
    with starttls(server, send_key) as client:
        client.mail("app@example.com")
        client.rcpt(to)
        code, text = client.data(message("app@example.com", to, "Hi"))
    assert code == 250
    message_id = text.decode().rsplit(" ", 1)[1]
    # AND its record ends suppressed, and nothing reaches the sink
    wait_until(lambda: services.messages.get(message_id).status == "suppressed", timeout=15, what="suppressed")
    assert mailbox.for_recipient(to) == []


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (make swaks, Debian package swaks)")
def test_swaks_sends_through_starttls_and_auth(server: Server, send_key: str, mailbox: Mailbox, unique: str) -> None:
    to = f"swaks-{unique}@example.com"
    # WHEN Debian's swaks sends with STARTTLS and AUTH PLAIN
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(server.port), "--tls", "--auth", "PLAIN",
         "--auth-user", "anything", "--auth-password", send_key, "--from", "app@example.com", "--to", to,
         "--header", "Subject: from swaks", "--header", "X-Jetmail-Tags: swaks", "--body", "sent by swaks"],
        capture_output=True, text=True, timeout=60, check=False)
    # THEN it succeeds, and the mail reaches the sink with jetmail's headers
    assert result.returncode == 0, result.stdout + result.stderr
    assert "queued as msg_" in result.stdout
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=20, what="swaks mail")
    msg = mailbox.message(mailbox.for_recipient(to)[0].id)
    assert msg["X-Jetmail-Message-Id"].startswith("msg_") and msg["X-Jetmail-Tags"] is None


# ---- refusals, each with its code

def test_never_an_open_relay_without_auth(server: Server) -> None:
    with starttls(server) as client:
        client.ehlo()
        assert reply(client, "MAIL FROM:<app@example.com>") == (530, "5.7.0 Authentication required")
        assert reply(client, "RCPT TO:<anyone@elsewhere.test>")[0] == 530
        assert reply(client, "DATA")[0] == 530


def test_auth_needs_starttls_first_on_587(server: Server, send_key: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        assert reply(client, "AUTH PLAIN") == (530, "5.7.0 Must issue a STARTTLS command first")
        assert reply(client, "MAIL FROM:<app@example.com>")[0] == 530


def test_wrong_and_revoked_keys_are_refused(server: Server, services: Services) -> None:
    with starttls(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
        client.login("anything", "jm_000000000000_" + "x" * 43)
    assert wrong.value.smtp_code == 535 and b"Invalid or revoked API key" in wrong.value.smtp_error
    key, token = services.api_keys.create("smtp-revoked", scopes=["send"])
    with starttls(server, token) as client:
        assert reply(client, "MAIL FROM:<app@example.com>")[0] == 250
        reply(client, "RSET")
        # WHEN the key is revoked elsewhere, THEN the open session stops within the cache's seconds
        services.api_keys.revoke(key.key_id)
        deadline = time.monotonic() + 10
        while (answer := reply(client, "MAIL FROM:<app@example.com>"))[0] == 250 and time.monotonic() < deadline:
            reply(client, "RSET")
            time.sleep(0.2)
        assert answer[0] == 535 and "revoked or rotated" in answer[1]


def test_from_allow_list(server: Server, send_key: str) -> None:
    with starttls(server, send_key) as client:
        code, text = reply(client, "MAIL FROM:<app@-bad-.example>")
        assert code == 553 and text.startswith("5.1.7 Bad sender address")
        code, text = reply(client, "MAIL FROM:<app@evil-corp.com>")
        assert code == 550 and text.startswith("5.7.1") and "not a verified sender" in text
        assert reply(client, "MAIL FROM:<app@example.com>")[0] == 250
        assert reply(client, "RCPT TO:<x@example.com>")[0] == 250
        code, text = client.data(message("boss@evil-corp.com", "x@example.com", "Spoof"))
    assert code == 550 and text.startswith(b"5.7.1 From header not allowed")


def test_size_limit(server: Server, send_key: str) -> None:
    with starttls(server, send_key) as client:
        code, text = reply(client, f"MAIL FROM:<app@example.com> SIZE={MAX_BYTES + 1}")
        assert (code, text) == (552, f"5.3.4 Message exceeds the size limit of {MAX_BYTES} bytes")
        client.mail("app@example.com")
        client.rcpt("big@example.com")
        code, text = client.data(message("app@example.com", "big@example.com", "Big", body="x" * 900 + "\r\n"
                                         ) * (MAX_BYTES // 900 + 2))
    assert (code, text.decode()) == (552, f"5.3.4 Message exceeds the size limit of {MAX_BYTES} bytes")


def test_recipient_limit_and_malformed_addresses(server: Server, send_key: str) -> None:
    with starttls(server, send_key) as client:
        client.mail("app@example.com")
        assert reply(client, "RCPT TO:<not an address>")[0] == 553
        code, text = reply(client, "RCPT TO:<nobody@-bad-.example>")
        assert code == 553 and text.startswith("5.1.3 Bad recipient address")
        for i in range(MAX_RECIPIENTS):
            assert reply(client, f"RCPT TO:<r{i}@example.com>")[0] == 250
        assert reply(client, "RCPT TO:<one-more@example.com>") == (
            452, f"4.5.3 Too many recipients: at most {MAX_RECIPIENTS} per message")


def test_eight_bit_and_utf8_need_their_extensions(server: Server, send_key: str) -> None:
    body = "Grüße".encode()
    with starttls(server, send_key) as client:
        client.mail("app@example.com")
        client.rcpt("eight@example.com")
        code, text = client.data(message("app@example.com", "eight@example.com", "8bit") + body + b"\r\n")
        assert code == 554 and b"BODY=8BITMIME" in text
        code, text = reply(client, "MAIL FROM:<app@example.com>")
        client.send("RCPT TO:<jürgen@example.com>\r\n".encode())  # UTF-8 on the wire, without SMTPUTF8
        assert client.getreply() == (553, b"5.6.7 A non-ASCII address needs SMTPUTF8 on MAIL FROM")
        reply(client, "RSET")
        # with BODY=8BITMIME the same content is accepted
        client.mail("app@example.com", ["BODY=8BITMIME"])
        client.rcpt("eight@example.com")
        code, text = client.data(message("app@example.com", "eight@example.com", "8bit") + body + b"\r\n")
        assert code == 250, text


def test_bad_instruction_headers(server: Server, send_key: str) -> None:
    with starttls(server, send_key) as client:
        for extra, expected in [("X-Jetmail-Category: bulk\r\n", b"5.6.0 X-Jetmail-Category must be"),
                                ("X-Jetmail-Metadata: [1]\r\n", b"5.6.0 X-Jetmail-Metadata must be a JSON object"),
                                ("X-Jetmail-Tags: a b\r\n", b"5.6.0 X-Jetmail-Tags: 'a b' is not a tag")]:
            client.mail("app@example.com")
            client.rcpt("h@example.com")
            code, text = client.data(message("app@example.com", "h@example.com", "x", extra=extra))
            assert code == 554 and text.startswith(expected), text


def test_rate_limit_per_key(server: Server, services: Services) -> None:
    _, token = services.api_keys.create("smtp-slow", scopes=["send"], rate_per_minute=2)
    with starttls(server, token) as client:
        client.mail("app@example.com")
        assert reply(client, "RCPT TO:<r1@example.com>")[0] == 250
        assert reply(client, "RCPT TO:<r2@example.com>")[0] == 250
        code, text = reply(client, "RCPT TO:<r3@example.com>")
    assert code == 421 and text.startswith("4.7.0 Rate limit of 2 messages per minute for API key"), text


def test_command_flood_ends_in_421(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"NOOP\r\n" * 200)  # pipelined, without reading a reply
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert b"421 4.7.0 NOOP sent too many times" in received


def test_data_that_never_ends_times_out(server: Server, send_key: str) -> None:
    with starttls(server, send_key) as client:
        client.mail("app@example.com")
        client.rcpt("slow@example.com")
        assert reply(client, "DATA")[0] == 354
        client.send(b"Subject: never ends\r\n\r\nstill writing\r\n")  # and never the final "."
        started = time.monotonic()
        code, text = client.getreply()
    assert code == 421 and text.startswith(b"4.4.2") and b"Timeout" in text
    assert time.monotonic() - started < TIMEOUT_S + 5


def test_connections_per_ip_are_capped(server: Server) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:
            assert sock.recv(1024).startswith(b"220")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            greeting = extra.recv(1024)
        assert greeting.startswith(b"421 4.7.0 Too many connections from 127.0.0.1")
    finally:
        for sock in held:
            sock.close()
    # once they close, a new connection is welcome again
    def welcome() -> bool:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            return sock.recv(1024).startswith(b"220")
    wait_until(welcome, timeout=10, what="a free connection slot")


def test_missing_from_header(server: Server, send_key: str, tmp_path: Path) -> None:
    with starttls(server, send_key) as client:
        client.mail("app@example.com")
        client.rcpt("nf@example.com")
        code, text = client.data(b"Subject: no from\r\n\r\nbody\r\n")
    assert (code, text) == (554, b"5.6.0 The message needs exactly one From header field, it has 0")


def test_dev_up_starts_it_with_a_self_signed_certificate(tmp_path: Path) -> None:
    from jetmail.devstack.stack import LocalStack

    local = LocalStack(tmp_path / "dev", preferred_ports=False)
    try:
        # WHEN the local stack starts the submission server
        local.up(["nats", "moto", "submission"])
        status = subprocess.run([sys.executable, "-m", "jetmail.cli", "dev", "--root", str(tmp_path / "dev"),
                                 "status", "--json"], capture_output=True, text=True, timeout=60, check=True)
        # THEN `dev status --json` reports its ports and certificate
        submission = json.loads(status.stdout)["submission"]
        assert submission["port"] > 0 and submission["tls_port"] > 0
        server = Server(port=submission["port"], tls_port=submission["tls_port"], cert=submission["cert_file"])
        # AND a client that trusts that certificate gets STARTTLS and AUTH PLAIN/LOGIN, and TLS on the other port
        with starttls(server) as client:
            client.ehlo()
            assert set(client.esmtp_features["auth"].split()) >= {"PLAIN", "LOGIN"}
        with smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=context(server), timeout=10) as client:
            assert client.ehlo()[0] == 250
    finally:
        local.down()
