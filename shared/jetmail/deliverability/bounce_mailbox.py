"""Bounces and complaints from a mailbox: `jetmail bounce-mailbox`, the second way reports come in.

For users whose MTA delivers the bounce domain's mail (or a feedback loop's reports) to a mailbox rather
than to `jetmail bounce-server`. It logs in over IMAP with TLS (IMAPClient), hands every waiting message
to the same intake the bounce server uses (``BounceIntake.process``), then deletes it (or, with
``bounce_imap_delete`` off, marks it seen). Between rounds it waits in IMAP IDLE (RFC 2177) where the
server offers it, so a report is read within a second or two of its arrival, and polls every
``bounce_imap_poll_s`` seconds where not. A message whose processing fails (the table unreachable, say)
is left as it is and read again in the next round: reports are applied once whatever the repeats.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from jetmail.config import ConfigError, Settings
from jetmail.deliverability.bounces import ReportOutcome

logger = logging.getLogger("jetmail.bounces.mailbox")

# RFC 2177: a server may end an IDLE after 30 minutes of it; renewing before then keeps the session
IDLE_RENEW_S = 25 * 60
_FETCH_BATCH = 50
_MAX_BACKOFF_S = 60.0
_ARRIVALS = (b"EXISTS", b"RECENT")


class MailboxError(Exception):
    """The mailbox could not be reached, logged into or read; the message says which and why."""


class Intake(Protocol):
    """What the poller needs of ``jetmail.deliverability.bounces.BounceIntake``."""

    def process(self, raw: bytes, *, envelope_to: Sequence[str] = ()) -> ReportOutcome: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxConfig:
    host: str
    port: int
    username: str
    password: str
    folder: str
    delete: bool
    poll_s: float
    ca_file: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> MailboxConfig:
        missing = [f"JETMAIL_{name.upper()}" for name in ("bounce_imap_host", "bounce_imap_username",
                                                             "bounce_imap_password")
                   if not getattr(settings, name)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} required: the mailbox bounce reports are delivered to "
                              "(or JETMAIL_BOUNCE_IMAP_CREDENTIALS_SECRET_ARN for the user and password)")
        assert settings.bounce_imap_host and settings.bounce_imap_username and settings.bounce_imap_password
        return cls(host=settings.bounce_imap_host, port=settings.bounce_imap_port,
                   username=settings.bounce_imap_username,
                   password=settings.bounce_imap_password.get_secret_value(), folder=settings.bounce_imap_folder,
                   delete=settings.bounce_imap_delete, poll_s=settings.bounce_imap_poll_s,
                   ca_file=settings.bounce_imap_ca_file)

    def tls(self) -> ssl.SSLContext:
        # certificate and host name always checked; a private CA only where one is named
        return ssl.create_default_context(cafile=self.ca_file)


class BounceMailbox:
    def __init__(self, config: MailboxConfig, *, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self._tls = config.tls()

    def connect(self) -> IMAPClient:
        client = IMAPClient(self.config.host, port=self.config.port, ssl=True, ssl_context=self._tls,
                            timeout=30)
        try:
            client.login(self.config.username, self.config.password)
            client.select_folder(self.config.folder)
        except BaseException:
            client.shutdown()
            raise
        return client

    def drain(self, client: IMAPClient) -> int:
        """Process every message waiting in the folder; the number handled (processed or skipped)."""
        uids: list[int] = client.search(["UNDELETED"] if self.config.delete else ["UNSEEN", "UNDELETED"])
        handled: list[int] = []
        for start in range(0, len(uids), _FETCH_BATCH):
            # PEEK: reading does not mark the message seen; only a processed one is marked
            fetched = client.fetch(uids[start:start + _FETCH_BATCH], ["BODY.PEEK[]"])
            for uid, data in fetched.items():
                raw = data.get(b"BODY[]")
                if not isinstance(raw, bytes):
                    continue
                try:
                    outcome = self.intake.process(raw)
                except Exception:
                    logger.exception("mailbox message %s not processed; read again next round", uid)
                    continue
                logger.info("mailbox message %s: %s %s", uid, outcome.kind, outcome.outcomes or "")
                handled.append(uid)
        if handled:
            if self.config.delete:
                client.delete_messages(handled)
                # UID EXPUNGE (UIDPLUS) removes only ours, not messages someone else flagged meanwhile
                client.uid_expunge(handled) if client.has_capability("UIDPLUS") else client.expunge()
            else:
                client.add_flags(handled, [b"\\Seen"])
        return len(handled)

    def wait(self, client: IMAPClient, stop: threading.Event) -> None:
        """Until new mail may be there: an IDLE push, the poll interval, or ``stop``."""
        if not client.has_capability("IDLE"):
            stop.wait(self.config.poll_s)
            return
        client.idle()
        try:
            deadline = time.monotonic() + IDLE_RENEW_S
            while not stop.is_set() and time.monotonic() < deadline:
                # a one-second check keeps SIGTERM prompt; the server's push ends the wait at once
                if any(len(r) > 1 and r[1] in _ARRIVALS for r in client.idle_check(timeout=1)):
                    return
        finally:
            client.idle_done()

    def run_once(self) -> int:
        """One round: connect, drain, log out; MailboxError when the mailbox cannot be read."""
        try:
            client = self.connect()
            try:
                return self.drain(client)
            finally:
                _logout(client)
        except (IMAPClientError, OSError) as exc:
            raise MailboxError(f"mailbox {self.config.host}:{self.config.port}: {exc}") from None

    def run(self, stop: threading.Event, *, ready: Callable[[], None] | None = None) -> None:
        """Drain and wait until ``stop``, reconnecting with a growing pause after a lost session."""
        backoff = 1.0
        while not stop.is_set():
            try:
                client = self.connect()
            except (IMAPClientError, OSError) as exc:
                logger.warning("mailbox %s:%s unreachable (%s); again in %.0f s", self.config.host,
                               self.config.port, exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            try:
                if ready is not None:
                    ready()
                    ready = None
                backoff = 1.0
                while not stop.is_set():
                    self.drain(client)
                    self.wait(client, stop)
            except (IMAPClientError, OSError) as exc:
                logger.warning("mailbox session lost (%s); reconnecting in %.0f s", exc, backoff)
                stop.wait(backoff)
            finally:
                _logout(client)


def _logout(client: IMAPClient) -> None:
    try:
        client.logout()
    except (IMAPClientError, OSError):
        client.shutdown()
