"""Provider test fixtures: settings variants, built messages, in-process TLS/AUTH SMTP servers."""

from __future__ import annotations

import datetime
import email.policy
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jetmail.config import Settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.smtp_sink import SinkHandler
from jetmail.devstack.stack import free_port
from jetmail.messaging.providers import OutboundMessage

SMTP_USER = "jetmail"
SMTP_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def smtp_credentials() -> tuple[str, str]:
    """The user and password the in-process servers with ``auth=True`` accept."""
    return SMTP_USER, SMTP_PASSWORD


@pytest.fixture
def settings_with(settings: Settings) -> Callable[..., Settings]:
    """The stack's settings with some fields replaced (validated like any other settings)."""

    def build(**overrides: Any) -> Settings:
        return Settings(_env_file=None, **{**settings.model_dump(), **overrides})  # type: ignore[call-arg]

    return build


@pytest.fixture
def outbound() -> Callable[..., OutboundMessage]:
    """A built message to one recipient, with a Message-ID header, as delivery hands it to a provider."""

    def build(recipient: str, *, mail_from: str = "sender@example.com", smtputf8: bool = False,
              tags: dict[str, str] | None = None, body: str = "hello\n") -> OutboundMessage:
        msg = EmailMessage()
        msg["From"] = mail_from
        msg["To"] = recipient
        msg["Subject"] = "provider test"
        msg["Message-ID"] = make_msgid(domain="jetmail.test")
        msg.set_content(body)
        policy = email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP
        message_id = "msg_" + msg["Message-ID"].strip("<>").split("@")[0].replace(".", "")
        return OutboundMessage(mail_from=mail_from, recipients=[recipient], raw=msg.as_bytes(policy=policy),
                               message_id=message_id, smtputf8=smtputf8, tags=tags or {})

    return build


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def client_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """What a client needs to trust the self-signed test certificate (verification stays on)."""
    return ssl.create_default_context(cafile=str(tls_files[0]))


def _authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(), SMTP_PASSWORD.encode())
    # handled=False: aiosmtpd then sends the 235/535 reply itself
    return AuthResult(success=ok, handled=False)


class _TimesOutAfterOneMessage(SinkHandler):
    """Answers a session's second MAIL with the 421 a relay sends when it has timed the session out."""

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        seen = getattr(session, "mails_seen", 0) + 1
        session.mails_seen = seen  # type: ignore[attr-defined]
        if seen > 1:
            return "421 4.4.2 jetmail-test: idle timeout, closing connection"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"


class LocalSink:
    """An aiosmtpd server in a thread, storing mail like the stack's sink, with TLS/AUTH/timeout options."""

    def __init__(self, maildir: Path, *, implicit_tls: bool = False, starttls: bool = False,
                 auth: bool = False, idle_timeout_s: float = 300, one_message_per_session: bool = False,
                 tls_files: tuple[Path, Path] | None = None, pipelining: bool = True,
                 handler: type[SinkHandler] | None = None) -> None:
        kind = handler or (_TimesOutAfterOneMessage if one_message_per_session else SinkHandler)
        self.handler = kind(maildir, pipelining=pipelining)
        self.mailbox = Mailbox(maildir)
        self.port = free_port()
        server_tls = None
        if tls_files is not None:
            server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_tls.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": True, "timeout": idle_timeout_s}
        if starttls:
            kwargs.update(tls_context=server_tls, require_starttls=True)
        if auth:
            # aiosmtpd only counts STARTTLS as TLS; under implicit TLS it would hide AUTH
            kwargs.update(authenticator=_authenticate, auth_required=True, auth_require_tls=not implicit_tls)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     ssl_context=server_tls if implicit_tls else None, **kwargs)

    def start(self) -> LocalSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()


@pytest.fixture
def local_sink(tmp_path: Path, tls_files: tuple[Path, Path]) -> Iterator[Callable[..., LocalSink]]:
    started: list[LocalSink] = []

    def start(**options: Any) -> LocalSink:
        sink = LocalSink(tmp_path / f"mail{len(started)}", tls_files=tls_files, **options).start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()
