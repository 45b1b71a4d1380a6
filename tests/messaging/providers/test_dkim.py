"""DKIM signing of SMTP-provider mail: what reaches the sink verifies with dkimpy against the public key."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jetmail.aws.clients import aws_client
from jetmail.config import ConfigError, Settings, get_settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from jetmail.messaging.providers import OutboundMessage, PermanentDeliveryError, SmtpProvider
from jetmail.messaging.providers.dkim import DkimSigner

SettingsWith = Callable[..., Settings]
Outbound = Callable[..., OutboundMessage]
DOMAIN = "dkim.jetmail-test.invalid"
SELECTOR = "s2026"


@pytest.fixture(scope="module")
def key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def dns_record(pem: str) -> Callable[..., bytes | None]:
    """What DNS would answer for ``<SELECTOR>._domainkey.<DOMAIN>``: the TXT record a user publishes."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name.rstrip(b".") == f"{SELECTOR}._domainkey.{DOMAIN}".encode() else None

    return lookup


def send(provider: SmtpProvider, message: OutboundMessage) -> None:
    async def scenario() -> None:
        try:
            await provider.send(message)
        finally:
            await provider.close()

    asyncio.run(scenario())


def received(mailbox: Mailbox, address: str) -> bytes:
    wait_until(lambda: mailbox.for_recipient(address), timeout=10, what=f"mail for {address}")
    return mailbox.raw(mailbox.for_recipient(address)[0].id)


def signed_headers(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    signature = re.search(r"^DKIM-Signature:(.*?)(?=^\S)", head + "\r\nX", re.MULTILINE | re.DOTALL)
    assert signature is not None
    tags = dict(tag.strip().split("=", 1) for tag in re.sub(r"\s+", "", signature.group(1)).split(";") if tag)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == ("rsa-sha256", "relaxed/relaxed", DOMAIN, SELECTOR)
    return tags["h"].split(":")


def test_smtp_provider_mail_verifies_against_the_published_key(
        settings_with: SettingsWith, mailbox: Mailbox, unique: str, outbound: Outbound, key_pem: str) -> None:
    # GIVEN an SMTP provider with a DKIM key for DOMAIN
    provider = SmtpProvider(settings_with(dkim_domain=DOMAIN, dkim_selector=SELECTOR, dkim_private_key=key_pem))
    # WHEN it sends a message to the sink
    send(provider, outbound(f"dkim-{unique}@example.com"))
    raw = received(mailbox, f"dkim-{unique}@example.com")
    # THEN the mail as received verifies against the TXT record, and signs the headers a reader sees
    assert dkim.verify(raw, dnsfunc=dns_record(key_pem)) is True
    assert set(signed_headers(raw)) >= {"from", "to", "subject", "message-id", "mime-version", "content-type"}
    # and a changed subject no longer verifies
    tampered = raw.replace(b"Subject: provider test", b"Subject: provider test!", 1)
    assert tampered != raw
    assert dkim.verify(tampered, dnsfunc=dns_record(key_pem)) is False


def test_list_unsubscribe_headers_are_signed_when_present(
        settings_with: SettingsWith, mailbox: Mailbox, unique: str, key_pem: str) -> None:
    # GIVEN a campaign message with one-click unsubscribe headers
    msg = EmailMessage()
    msg["From"] = "news@dkim.jetmail-test.invalid"
    msg["To"] = f"dkim-lu-{unique}@example.com"
    msg["Subject"] = "news"
    msg["Date"] = "Sun, 06 Dec 2026 20:00:00 +0000"
    msg["Message-ID"] = f"<{unique}@jetmail.test>"
    msg["List-Unsubscribe"] = f"<https://jetmail.test/u/{unique}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content("hello\n")
    message = OutboundMessage(mail_from="news@dkim.jetmail-test.invalid", recipients=[msg["To"]],
                              raw=msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")), message_id=unique,
                              lane="marketing")
    provider = SmtpProvider(settings_with(dkim_domain=DOMAIN, dkim_selector=SELECTOR, dkim_private_key=key_pem))
    # WHEN it is sent
    send(provider, message)
    raw = received(mailbox, f"dkim-lu-{unique}@example.com")
    # THEN both headers and the Date are signed, and the mail verifies
    assert {"date", "list-unsubscribe", "list-unsubscribe-post"} <= set(signed_headers(raw))
    assert dkim.verify(raw, dnsfunc=dns_record(key_pem)) is True


def test_a_message_without_from_is_refused_not_sent_unsigned(settings_with: SettingsWith, key_pem: str) -> None:
    # GIVEN a signing provider and a message whose headers lack From
    provider = SmtpProvider(settings_with(dkim_domain=DOMAIN, dkim_private_key=key_pem))
    message = OutboundMessage(mail_from="a@example.com", recipients=["b@example.com"],
                              raw=b"To: b@example.com\r\nSubject: x\r\n\r\nbody\r\n", message_id="m1")
    # WHEN it is sent THEN it fails for good, naming the reason
    with pytest.raises(PermanentDeliveryError, match="no From header"):
        send(provider, message)


def test_bad_key_settings_fail_at_start(settings_with: SettingsWith) -> None:
    with pytest.raises(ConfigError, match="JETMAIL_DKIM_PRIVATE_KEY"):
        SmtpProvider(settings_with(dkim_domain=DOMAIN))
    with pytest.raises(ConfigError, match="not an RSA private key"):
        SmtpProvider(settings_with(dkim_domain=DOMAIN, dkim_private_key="-----BEGIN RSA PRIVATE KEY-----\nx\n"))
    # no domain: no signing, whatever else is set
    assert DkimSigner.from_settings(settings_with(dkim_private_key="unused")) is None


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("JETMAIL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env or local-stack settings file here
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_the_key_comes_from_a_secrets_manager_secret(clean_env: pytest.MonkeyPatch, stack: StackState,
                                                     settings: Settings, unique: str, key_pem: str) -> None:
    # GIVEN the PEM in a secret, named by JETMAIL_DKIM_PRIVATE_KEY_SECRET_ARN as the template does
    arn = aws_client("secretsmanager", settings).create_secret(Name=f"dkim-{unique}", SecretString=key_pem)["ARN"]
    clean_env.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", stack.services["moto"].url)
    clean_env.setenv("AWS_ACCESS_KEY_ID", "local")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "local")
    clean_env.setenv("JETMAIL_TABLE_NAME", "jetmail-test")
    clean_env.setenv("JETMAIL_SIGNING_SECRET", "s" * 40)
    clean_env.setenv("JETMAIL_DKIM_DOMAIN", DOMAIN)
    clean_env.setenv("JETMAIL_DKIM_SELECTOR", SELECTOR)
    clean_env.setenv("JETMAIL_DKIM_PRIVATE_KEY_SECRET_ARN", arn)
    # WHEN the settings are read THEN the signer has that key
    loaded = get_settings()
    assert loaded.dkim_private_key is not None
    assert loaded.dkim_private_key.get_secret_value() == key_pem
    signer = DkimSigner.from_settings(loaded)
    assert signer is not None
    raw = signer.sign(b"From: a@dkim.jetmail-test.invalid\r\nTo: b@example.com\r\nSubject: s\r\n\r\nhi\r\n")
    assert dkim.verify(raw, dnsfunc=dns_record(key_pem)) is True
