"""``jetmail smtp-server``: the SMTP submission edge (aiosmtpd), for applications that speak SMTP, not HTTP.

Port 587 requires STARTTLS before anything but EHLO/NOOP/QUIT, and so before AUTH; port 465 is TLS from
the first byte. AUTH PLAIN or LOGIN takes any user name and an API key with the ``send`` scope as the
password. Nothing is accepted without AUTH, for any domain: this is never an open relay.

The key is checked again (through the API's few-second verdict cache, ``JETMAIL_API_KEY_CACHE_S``) at
every MAIL FROM, so a revoked or rotated key stops working on open sessions too. Every recipient takes
one request from the key's per-minute budget, the one ``POST /v1/messages`` takes from (421 once spent).
What the message becomes is ``jetmail.messaging.submission``'s business.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from jetmail.audience.addresses import InvalidAddress, normalise_email
from jetmail.messaging.messages import RawSubmission, new_message_id
from jetmail.messaging.submission import RawStore, Refused, prepare

if TYPE_CHECKING:
    from jetmail.api.throttle import ApiThrottle
    from jetmail.compliance.apikeys import ApiKey
    from jetmail.config import Settings
    from jetmail.services import Services

log = logging.getLogger("jetmail.messaging.smtp_server")

# aiosmtpd's own replies, made precise (an enhanced status code, the limit that applies)
_REWRITES = {
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "552 Error: Too much mail data": "552 5.3.4 Message exceeds the size limit of {max_bytes} bytes",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message exceeds the size limit of {max_bytes} bytes",
    "553 5.1.3 Error: malformed address": "553 5.1.3 Malformed address: expected <local-part@domain>",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long: at most 998 characters (RFC 5322)",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT TO first",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL FROM first",
}
# how often one session may send one command (aiosmtpd counts per connection, never resetting): a pipelined
# flood of NOOPs ends in 421 at once; MAIL, RCPT and DATA allow 10,000 messages per session
COMMAND_CALL_LIMIT = {"*": 10_000, "NOOP": 20, "EHLO": 10, "HELO": 10, "AUTH": 5, "STARTTLS": 2, "VRFY": 5,
                      "HELP": 5, "EXPN": 5}


class ConnectionCap:
    """Open connections per client address, over both ports."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def take(self, peer: str) -> bool:
        if self.open.get(peer, 0) >= self.limit:
            return False
        self.open[peer] = self.open.get(peer, 0) + 1
        return True

    def give(self, peer: str) -> None:
        left = self.open.get(peer, 0) - 1
        if left > 0:
            self.open[peer] = left
        else:
            self.open.pop(peer, None)


class CappedSMTP(SMTP):
    """aiosmtpd's protocol with a cap on open connections per client address: over it, a 421 at greeting
    (the submission server and the bounce intake)."""

    def __init__(self, handler: Any, *, cap: ConnectionCap, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._cap = cap
        self._peer_ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._peer_ip is None:  # not the STARTTLS re-entry
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            if not self._cap.take(ip):
                log.warning("refused %s: over %d connections", ip, self._cap.limit)
                cast(asyncio.WriteTransport, transport).write(
                    f"421 4.7.0 Too many connections from {ip} (limit {self._cap.limit}); try again later\r\n".encode())
                transport.close()
                return
            self._peer_ip = ip
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._peer_ip is None:
            return  # refused in connection_made: aiosmtpd never saw it
        if self._peer_ip:
            self._cap.give(self._peer_ip)
            self._peer_ip = ""  # given back once
        super().connection_lost(error)


class SubmissionSMTP(CappedSMTP):
    """The capped protocol with jetmail's limits: a 421 on timeout, precise replies."""

    def _timeout_cb(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            cast(asyncio.WriteTransport, self.transport).write(
                f"421 4.4.2 {self.hostname} Timeout: no complete command or DATA within "
                f"{self._timeout_duration:.0f}s, closing\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]  # untyped in aiosmtpd

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            handler: SubmissionHandler = self.event_handler
            status = _REWRITES.get(status, status).format(max_bytes=handler.max_bytes)
        await super().push(status)
        if isinstance(status, str) and status.startswith("421") and self.transport is not None:
            self.transport.close()


class SubmissionHandler:
    """aiosmtpd hooks: authenticate with an API key, check each command, hand DATA to the pipeline."""

    def __init__(self, services: Services, *, throttle: ApiThrottle, raw_store: RawStore,
                 run: Callable[[Any], Any]) -> None:
        self.services = services
        self.settings = services.settings
        self.throttle = throttle
        self.raw_store = raw_store
        self._run = run  # runs a coroutine on the services' NATS connection (SyncClient.run)
        self.max_bytes = self.settings.submission_max_bytes

    # ---- AUTH
    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        token = auth_data.password.decode("utf-8", "replace").strip()
        key = self.services.api_keys.authenticate(token, cached=True)
        if key is None:
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Invalid or revoked API key (the password is a jetmail API key)")
        if not key.allows("send"):
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 This API key lacks the 'send' scope")
        return AuthResult(success=True, auth_data=(key.key_id, token))

    async def _key(self, session: Session) -> ApiKey | None:
        """The session's key as it is now: a revocation or rotation shows within the verdict cache's seconds."""
        _, token = _session_key(session)
        return await asyncio.to_thread(self.services.api_keys.authenticate, token, cached=True)

    # ---- envelope
    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        key = await self._key(session)
        if key is None:
            return "535 5.7.8 This API key was revoked or rotated: authenticate again with the current key"
        if not address:
            return "553 5.1.7 A null sender (MAIL FROM:<>) cannot submit mail"
        if not address.isascii() and not envelope.smtp_utf8:
            return "553 5.6.7 A non-ASCII address needs SMTPUTF8 on MAIL FROM"
        try:
            address = normalise_email(address)
        except InvalidAddress as exc:
            return f"553 5.1.7 Bad sender address {address[:80]!r}: {_one_line(exc)}"
        try:
            self.services.composer.check_from(address)
        except InvalidAddress as exc:
            return f"550 5.7.1 Sender {address!r} not allowed: {_one_line(exc)}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if not address.isascii() and not envelope.smtp_utf8:
            return "553 5.6.7 A non-ASCII address needs SMTPUTF8 on MAIL FROM"
        if len(envelope.rcpt_tos) >= self.settings.submission_max_recipients:
            return f"452 4.5.3 Too many recipients: at most {self.settings.submission_max_recipients} per message"
        try:
            address = normalise_email(address)
        except InvalidAddress as exc:
            return f"553 5.1.3 Bad recipient address {address[:80]!r}: {_one_line(exc)}"
        key = await self._key(session)
        if key is None:
            return "535 5.7.8 This API key was revoked or rotated: authenticate again with the current key"
        # one request of the key's per-minute budget per recipient, as POST /v1/messages takes per message
        retry = await asyncio.to_thread(self.throttle.check, key)
        if retry:
            return (f"421 4.7.0 Rate limit of {self.throttle.limit_for(key)} messages per minute for API key "
                    f"{key.key_id} reached; retry in {retry}s")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    # ---- DATA
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        ids = [new_message_id() for _ in envelope.rcpt_tos]
        try:
            prepared = prepare(content, message_id_header=self.services.composer.message_id_header(ids[0]),
                               smtputf8=envelope.smtp_utf8, eight_bit="BODY=8BITMIME" in envelope.mail_options)
            self.services.composer.check_from(prepared.from_header)
        except Refused as exc:
            return exc.reply
        except InvalidAddress as exc:
            return f"550 5.7.1 From header not allowed: {_one_line(exc)}"
        key_id, _ = _session_key(session)
        ref = ids[0].replace("msg_", "raw_", 1)
        await asyncio.to_thread(self._run, lambda queue: self.raw_store.put(ref, prepared.raw))
        submission = RawSubmission(message_ids=ids, recipients=list(envelope.rcpt_tos),
                                   mail_from=str(envelope.mail_from), raw_ref=ref, category=prepared.category,
                                   tags=prepared.tags, metadata=prepared.metadata, api_key_id=key_id)
        await asyncio.to_thread(self.services.messages.submit_raw, submission)
        log.info("accepted %s for %d recipient(s) from key %s", prepared.message_id_header, len(ids), key_id)
        if len(ids) == 1:
            return f"250 2.0.0 Ok: queued as {ids[0]}"
        lines = [f"250-2.0.0 Ok: queued {len(ids)} messages", *(f"250-{i}" for i in ids[:-1]), f"250 {ids[-1]}"]
        return "\r\n".join(lines)

    async def handle_exception(self, error: Exception) -> str:
        log.exception("submission failed: %s", error)
        return "451 4.3.0 Temporary server error; try again later"


def _session_key(session: Session) -> tuple[str, str]:
    """The (key id, token) ``authenticate`` left on the session: with ``auth_required``, every command
    that reads it comes after a successful AUTH."""
    return cast(tuple[str, str], session.auth_data)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def tls_context_from_pem(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """The same context from PEM text (a Secrets Manager secret). ``ssl`` loads a chain only from files, so
    they live in a private temporary folder for the moment it reads them."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="jetmail-tls-") as folder:  # mode 0700
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_text(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_text(key_pem)
        return tls_context(str(cert_path), str(key_path))


def _server_tls(settings: Settings) -> ssl.SSLContext:
    """The submission ports' TLS context: PEM text when given (AWS), else the files."""
    from jetmail.config import ConfigError

    try:
        if settings.submission_cert_pem and settings.submission_key_pem:
            return tls_context_from_pem(settings.submission_cert_pem,
                                        settings.submission_key_pem.get_secret_value())
        if settings.submission_cert_file and settings.submission_key_file:
            return tls_context(settings.submission_cert_file, settings.submission_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the submission server's TLS certificate or key cannot be used: {exc}") from None
    raise ConfigError("JETMAIL_SUBMISSION_CERT_FILE and JETMAIL_SUBMISSION_KEY_FILE (or JETMAIL_SUBMISSION_CERT_PEM "
                      "and JETMAIL_SUBMISSION_KEY_PEM): the submission server needs a TLS certificate and key (PEM)")


def self_signed(folder: str, hostname: str = "localhost") -> tuple[str, str]:
    """A fresh self-signed certificate and key for ``hostname`` (the local stack's): (cert path, key path)."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import ip_address
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname),
                                                        x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "submission-cert.pem", out / "submission-key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


async def serve(services: Services, *, ready: Callable[[list[int]], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Listen on the submission ports until ``stop`` is set (or forever); ``ready`` gets the bound ports."""
    from jetmail.api.throttle import ApiThrottle

    settings = services.settings
    context = _server_tls(settings)
    sync = services.queue
    raw_store = RawStore(None, ttl_s=settings.submission_retention_hours * 3600, replicas=settings.stream_replicas)

    def run(operation: Any) -> Any:
        def bound(queue: Any) -> Any:
            raw_store.js = queue.js  # the connection's current JetStream context (a reconnect makes a new one)
            return operation(queue)

        return sync.run(bound)

    throttle = ApiThrottle(lambda: sync, per_minute=settings.api_rate_per_minute, replicas=settings.stream_replicas)
    handler = SubmissionHandler(services, throttle=throttle, raw_store=raw_store, run=run)
    cap = ConnectionCap(settings.submission_max_connections_per_ip)
    common: dict[str, Any] = dict(
        cap=cap, data_size_limit=settings.submission_max_bytes, enable_SMTPUTF8=True,
        hostname=settings.submission_hostname, ident="jetmail ESMTP submission", timeout=settings.submission_timeout_s,
        auth_required=True, authenticator=handler.authenticate, command_call_limit=COMMAND_CALL_LIMIT)
    loop = asyncio.get_running_loop()
    servers = []
    if settings.submission_port:
        servers.append(await loop.create_server(
            lambda: SubmissionSMTP(handler, tls_context=context, require_starttls=True, auth_require_tls=True,
                                   **common),
            host=settings.submission_host, port=settings.submission_port))
    if settings.submission_tls_port:
        # the socket is TLS from the first byte: aiosmtpd's STARTTLS-based AUTH check does not apply
        servers.append(await loop.create_server(
            lambda: SubmissionSMTP(handler, auth_require_tls=False, **common),
            host=settings.submission_host, port=settings.submission_tls_port, ssl=context))
    if not servers:
        from jetmail.config import ConfigError

        raise ConfigError("JETMAIL_SUBMISSION_PORT and JETMAIL_SUBMISSION_TLS_PORT are both 0: nothing to serve")
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    log.info("SMTP submission listening on %s", ", ".join(str(p) for p in ports))
    if ready is not None:
        ready(ports)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        for server in servers:
            server.close()
