"""`jetmail bounce-mailbox`: reports delivered to an IMAP mailbox (a private Dovecot, IMAP over TLS) are read,
applied by the same intake as the bounce server's, then deleted or marked seen; IDLE reads them on arrival."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from bounce_reports import DOMAIN, sample
from imapclient import IMAPClient
from pydantic import SecretStr

from dovecot import PASSWORD, USER, DovecotInstance, private_dovecot
from jetmail.config import Settings
from jetmail.deliverability.bounce_mailbox import BounceMailbox, MailboxConfig
from jetmail.deliverability.bounces import BounceIntake, verp_address
from jetmail.devstack.stack import StackState, wait_until
from jetmail.messaging.messages import MessageStatus, SendRequest, new_message_id
from jetmail.services import Services
from stacktools import cli_runner, run_cli, stack_env

RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}


@pytest.fixture(scope="module")
def imap() -> Iterator[DovecotInstance]:
    with private_dovecot() as server:
        yield server


def client_of(server: DovecotInstance) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=server.port, ssl=True,
                        ssl_context=ssl.create_default_context(cafile=str(server.cert)))
    client.login(USER, PASSWORD)
    client.select_folder("INBOX")
    return client


def sent_message(services: Services, to: str) -> tuple[str, str]:
    """A message jetmail recorded as sent to ``to``: its id and its return path."""
    message_id = new_message_id()
    repo = services.messages.messages
    repo.create(repo.record(message_id, request=SendRequest.model_validate(
        {"template": "password_reset", "to": to, "context": RESET}), status=MessageStatus.SENT))
    return_path = verp_address(message_id, signer=services.signer, domain=DOMAIN)
    assert return_path is not None
    return message_id, return_path


def config(server: DovecotInstance, settings: Settings, **overrides: object) -> MailboxConfig:
    values = settings.model_copy(update={"bounce_imap_host": "127.0.0.1", "bounce_imap_port": server.port,
                                         "bounce_imap_username": USER, "bounce_imap_password": SecretStr(PASSWORD),
                                         "bounce_imap_ca_file": str(server.cert), **overrides})
    return MailboxConfig.from_settings(values)


def test_once_applies_every_report_waiting_and_deletes_it(imap: DovecotInstance, services: Services,
                                                          stack: StackState, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    # GIVEN a DSN about a message jetmail sent, and an out-of-office reply, waiting in the mailbox
    to = f"mbox-gone-{unique}@example.org"
    message_id, return_path = sent_message(services, to)
    with client_of(imap) as client:
        client.append("INBOX", sample("rfc3464-failed.eml", message_id=message_id, rcpt=to, verp=return_path))
        client.append("INBOX", sample("out-of-office.eml", message_id=message_id, rcpt=to, verp=return_path))
    env = stack_env(stack, JETMAIL_BOUNCE_DOMAIN=DOMAIN, JETMAIL_BOUNCE_IMAP_HOST="127.0.0.1",
                    JETMAIL_BOUNCE_IMAP_PORT=str(imap.port), JETMAIL_BOUNCE_IMAP_USERNAME=USER,
                    JETMAIL_BOUNCE_IMAP_PASSWORD=PASSWORD, JETMAIL_BOUNCE_IMAP_CA_FILE=str(imap.cert))
    # WHEN `jetmail bounce-mailbox --once` runs
    with cli_runner(env, tmp_path, monkeypatch) as cli:
        result = run_cli(cli, "bounce-mailbox", "--once")
    # THEN both were handled: the address is suppressed as a hard bounce, and the mailbox is empty
    assert "2 message(s) processed" in result.output
    suppression = services.suppressions.get(to)
    assert suppression is not None and (suppression.reason, suppression.source) == ("hard_bounce", "smtp")
    with client_of(imap) as client:
        assert client.search(["ALL"]) == []


def test_idle_reads_a_report_on_arrival_and_marks_it_seen(imap: DovecotInstance, services: Services,
                                                          settings: Settings, unique: str) -> None:
    # GIVEN the poller watching the mailbox, keeping processed mail, and an hour between polls (so only
    # IDLE can make it read anything soon)
    intake = BounceIntake(feedback=services.feedback, signer=services.signer, bounce_domain=DOMAIN)
    mailbox = BounceMailbox(config(imap, settings, bounce_imap_delete=False, bounce_imap_poll_s=3600),
                            intake=intake)
    stop, ready = threading.Event(), threading.Event()
    watcher = threading.Thread(target=mailbox.run, args=(stop,), kwargs={"ready": ready.set}, daemon=True)
    watcher.start()
    try:
        assert ready.wait(15)
        # WHEN a DSN is delivered to the mailbox
        to = f"mbox-idle-{unique}@example.org"
        message_id, return_path = sent_message(services, to)
        with client_of(imap) as client:
            client.append("INBOX", sample("rfc3464-failed.eml", message_id=message_id, rcpt=to, verp=return_path))
        # THEN it is applied at once, and kept, marked seen
        wait_until(lambda: services.suppressions.get(to), timeout=15, what="suppression through IDLE")
        with client_of(imap) as client:
            wait_until(lambda: client.search(["UNSEEN"]) == [], timeout=5, what="the report marked seen")
            assert client.search(["SEEN"])
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()  # SIGTERM's stop ends an IDLE within about a second


def test_bad_settings_and_credentials_are_clear_errors(imap: DovecotInstance, stack: StackState, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with cli_runner(stack_env(stack), tmp_path, monkeypatch) as cli:
        missing = run_cli(cli, "bounce-mailbox", "--once", code=2)
    assert "JETMAIL_BOUNCE_IMAP_HOST" in missing.output
    env = stack_env(stack, JETMAIL_BOUNCE_IMAP_HOST="127.0.0.1", JETMAIL_BOUNCE_IMAP_PORT=str(imap.port),
                    JETMAIL_BOUNCE_IMAP_USERNAME=USER, JETMAIL_BOUNCE_IMAP_PASSWORD="wrong",
                    JETMAIL_BOUNCE_IMAP_CA_FILE=str(imap.cert))
    with cli_runner(env, tmp_path, monkeypatch) as cli:
        refused = run_cli(cli, "bounce-mailbox", "--once", code=1)
    assert f"error: mailbox 127.0.0.1:{imap.port}:" in refused.output
    # and a server whose certificate is not trusted is refused, not read
    env["JETMAIL_BOUNCE_IMAP_CA_FILE"] = ""
    env["JETMAIL_BOUNCE_IMAP_PASSWORD"] = PASSWORD
    with cli_runner(env, tmp_path, monkeypatch) as cli:
        untrusted = run_cli(cli, "bounce-mailbox", "--once", code=1)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.output
