"""The webhook transport against real sockets: the POST goes to the checked address with the URL's name kept
(``Host``, TLS SNI, certificate), redirects are not followed, only an excerpt of an answer is read, a
malformed answer is a failed attempt, kept connections are reused (and replaced when the receiver closed
them), a silent receiver times out."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jetmail.webhooks import transport
from stacktools import ReceiverServer

BIG = 1_000_000


class Receiver:
    """Answers each path its own way, recording (path, Host, the client's port) of every request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.seen.append((self.path, self.headers.get("Host", ""), self.client_address[1]))
                try:
                    self.answer()
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: as it should
                    self.close_connection = True

            def raw(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

            def answer(self) -> None:
                path = self.path.split("?")[0]
                if path == "/chunked":
                    self.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n")
                elif path == "/early-hints":
                    self.raw(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\n"
                             b"Content-Length: 2\r\n\r\nok")
                elif path == "/redirect":
                    self.raw(b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n")
                elif path == "/big-length":
                    self.raw(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode() + b"L" * BIG)
                elif path == "/big-chunked":
                    self.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(BIG // 65536):
                        self.raw(b"10000\r\n" + b"C" * 65536 + b"\r\n")
                    self.raw(b"0\r\n\r\n")
                elif path == "/big-close":
                    self.raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"E" * BIG)
                    self.close_connection = True
                elif path == "/malformed":  # not an HTTP status line
                    self.raw(b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n")
                elif path == "/bad-chunk":  # a chunk size that is not hexadecimal, the connection left open
                    self.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\nzz\r\n")
                elif path == "/close":  # closes after answering, without saying so
                    self.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    self.close_connection = True
                else:
                    self.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ReceiverServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def post(url: str, *, client: transport.Client | None = None, timeout_s: float = 3.0) -> transport.Answer:
    async def run() -> transport.Answer:
        own = client or transport.Client(timeout_s=timeout_s)
        try:
            return await transport.post(own, url, body=b'{"id": "evt_t"}', headers={"webhook-id": "evt_t"},
                                        allow_private=False, address="127.0.0.1")
        finally:
            await own.aclose()

    return asyncio.run(run())


def posts_in_turn(receiver: Receiver, paths: tuple[str, ...]) -> list[tuple[transport.Answer, int]]:
    """POSTs to each path in turn over one client: each answer with the client port the receiver saw."""
    async def run() -> list[tuple[transport.Answer, int]]:
        client = transport.Client(timeout_s=3)
        out = []
        try:
            for path in paths:
                answer = await transport.post(client, f"http://hooks.invalid:{receiver.port}{path}", body=b"{}",
                                              headers={}, allow_private=False, address="127.0.0.1")
                out.append((answer, receiver.seen[-1][2]))
        finally:
            await client.aclose()
        return out

    return asyncio.run(run())


def test_a_post_goes_to_the_checked_address_and_keeps_the_name(receiver: Receiver) -> None:
    # GIVEN a URL whose name never resolves (.invalid) and the address it was checked to have
    # WHEN it is POSTed THEN the request reached that address, with the name (and port) in Host
    answer = post(f"http://hooks.invalid:{receiver.port}/in/box?x=1 2")
    assert (answer.status, answer.excerpt, answer.error) == (200, "hello", None)
    path, host, _ = receiver.seen[-1]
    assert path == "/in/box?x=1%202" and host == f"hooks.invalid:{receiver.port}"


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    before = len(receiver.seen)
    answer = post(f"http://hooks.invalid:{receiver.port}/redirect")
    assert answer.status == 302
    assert [p for p, _, _ in receiver.seen[before:]] == ["/redirect"]


@pytest.mark.parametrize(("path", "byte"), [("/big-length", "L"), ("/big-chunked", "C"), ("/big-close", "E")])
def test_only_an_excerpt_of_a_large_answer_is_read(receiver: Receiver, path: str, byte: str) -> None:
    answer = post(f"http://hooks.invalid:{receiver.port}{path}")
    assert answer.status == 200 and answer.excerpt == byte * transport.EXCERPT_BYTES


def test_chunked_and_informational_answers_are_read(receiver: Receiver) -> None:
    assert post(f"http://hooks.invalid:{receiver.port}/chunked").excerpt == "hello"
    answer = post(f"http://hooks.invalid:{receiver.port}/early-hints")
    assert (answer.status, answer.excerpt) == (201, "ok")


def test_a_malformed_answer_is_a_failed_attempt_and_its_connection_is_not_reused(receiver: Receiver) -> None:
    # GIVEN one client WHEN a receiver answers with a broken status line, then a broken chunk, then well
    (malformed, first), (bad_chunk, second), (ok, third) = posts_in_turn(receiver, ("/malformed", "/bad-chunk", "/ok"))
    # THEN a broken status line is no answer, with h11's reason; a broken body keeps its status and what came
    assert malformed.status is None and malformed.error is not None and "status line" in malformed.error
    assert (bad_chunk.status, bad_chunk.excerpt) == (200, "hel")
    assert (ok.status, ok.excerpt) == (200, "hello")
    # AND neither connection carried another request (the receiver left both open)
    assert len({first, second, third}) == 3


def test_a_header_that_would_leave_its_line_is_refused_before_sending(receiver: Receiver) -> None:
    before = len(receiver.seen)

    async def run() -> transport.Answer:
        client = transport.Client(timeout_s=3)
        try:
            return await transport.post(client, f"http://hooks.invalid:{receiver.port}/ok", body=b"{}",
                                        headers={"webhook-id": "evt_t\r\nX-Injected: 1"}, allow_private=False,
                                        address="127.0.0.1")
        finally:
            await client.aclose()

    answer = asyncio.run(run())
    assert answer.status is None and answer.error is not None and "header" in answer.error.lower()
    assert len(receiver.seen) == before


def test_a_kept_connection_is_reused_and_replaced_once_the_receiver_closed_it(receiver: Receiver) -> None:
    results = posts_in_turn(receiver, ("/ok", "/chunked", "/close", "/ok", "/ok"))
    assert [a.status for a, _ in results] == [200] * 5
    ports = [port for _, port in results]
    # the first three share a connection, which the receiver then closed: the last two share a new one
    assert ports[0] == ports[1] == ports[2] != ports[3] == ports[4]


def test_a_silent_receiver_times_out() -> None:
    with socket.socket() as listening:  # accepts connections (the kernel's backlog), never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        answer = post(f"http://hooks.invalid:{listening.getsockname()[1]}/", timeout_s=0.5)
    assert answer.status is None and answer.error is not None and "Timeout" in answer.error
    assert answer.latency_ms < 3000


def test_an_unchecked_private_destination_is_refused_before_connecting(receiver: Receiver) -> None:
    before = len(receiver.seen)

    async def run() -> transport.Answer:
        client = transport.Client(timeout_s=3)
        try:
            return await transport.post(client, f"http://127.0.0.1:{receiver.port}/ok", body=b"{}", headers={},
                                        allow_private=False)
        finally:
            await client.aclose()

    with pytest.raises(transport.UnsafeDestination):
        asyncio.run(run())
    assert len(receiver.seen) == before


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_names_the_host_in_sni_and_verifies_the_certificate_against_it(tmp_path: Path) -> None:
    # GIVEN an HTTPS receiver on 127.0.0.1 with a certificate for hooks.test, recording the SNI it is asked for
    cert, key = _certificate(tmp_path, "hooks.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    asked: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: asked.append(name)  # type: ignore[assignment,func-returns-value]
    secure = Receiver(tls=server_tls)
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        # WHEN the URL names hooks.test and the checked address is 127.0.0.1 THEN TLS asked for hooks.test
        answer = post(f"https://hooks.test:{secure.port}/ok", client=transport.Client(timeout_s=3, tls=trusting))
        assert (answer.status, answer.excerpt) == (200, "hello") and asked == ["hooks.test"]
        assert secure.seen[-1][1] == f"hooks.test:{secure.port}"
        # AND a name the certificate does not carry fails verification: nothing is sent
        sent = len(secure.seen)
        other = post(f"https://other.test:{secure.port}/ok", client=transport.Client(timeout_s=3, tls=trusting))
        assert other.status is None and other.error is not None and "certificate" in other.error.lower()
        assert len(secure.seen) == sent
    finally:
        secure.close()
