"""SMTP delivery over a small pool of persistent connections (aiosmtplib).

Opening a connection costs a TCP handshake, the greeting, EHLO and often STARTTLS and AUTH; a
transaction on an open connection costs MAIL, RCPT and DATA. The pool keeps up to
``smtp_pool_size`` connections open, hands one to each send, and retires a connection after
``smtp_max_messages_per_connection`` transactions (relays cap messages per session and spread
load by connection). A connection whose state is unknown (timeout, disconnect, cancellation) is
closed, never reused; after a refused transaction it is reset with RSET and reused.

When the server offers PIPELINING (RFC 2920; Postfix, Exim and jetmail's sink do), MAIL FROM, RCPT TO
and DATA go out in one write and their replies are read together (``jetmail.messaging.providers.pipelining``):
one round trip before the message body instead of three. A message with several recipients
pipelines MAIL and RCPT only and sends DATA after reading them, so a refused recipient never leaves
the server waiting for a body it will not get. A campaign message hands its connection (and its place in
the pool) on as soon as its body is written: the next campaign message's MAIL, RCPT and DATA go out in the
same write as that body, before its reply (as RFC 2920's own example does), so a connection carries a
message per round trip, not per two. Replies come back in order, each to its own transaction; a body's
reply ends its transaction whatever it says, so a refused body leaves the next transaction alone, and a
connection lost then fails the body (temporary: it may have been taken) while the message behind it, whose
body was never sent, goes again over a fresh connection. A transactional message never queues behind a
campaign message's reply: it takes a connection with none outstanding, or opens one.
``smtp_pipelining=false`` turns it off.

Campaign mail and the transactional lane (the messages API) each hold at most ``smtp_pool_size``
connections at once: a password reset never queues behind a campaign's sends for a connection. Idle
connections are shared, so a reset usually reuses one a campaign opened.

With ``JETMAIL_BOUNCE_DOMAIN`` set, the envelope sender is the message's VERP return path
(``jetmail.deliverability.bounces``), so a bounce names the message it is about; a 5xx refusal of a recipient
carries the bounce it amounts to (``PermanentDeliveryError.bounce``) for the feedback processor.

With ``JETMAIL_DKIM_DOMAIN`` set, each message is DKIM-signed (``jetmail.messaging.providers.dkim``) once,
before it takes a connection.

The pool belongs to the event loop that first uses it; many tasks on that loop may send at once.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import aiosmtplib
from aiosmtplib.email import quote_address

from jetmail.config import ConfigError, Settings
from jetmail.deliverability.bounces import reject_event, verp_address
from jetmail.messaging.providers import pipelining
from jetmail.messaging.providers.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    SendResult,
    TemporaryDeliveryError,
)
from jetmail.messaging.providers.dkim import DkimSigner, DkimSigningError
from jetmail.messaging.tokens import Signer

# Relays say "slow down" only in words: 421/451/452 replies carry it in the text, e.g.
# "421 4.7.0 too many messages", "451 4.7.1 rate limit exceeded", "452 4.5.3 too many recipients".
_THROTTLE_CODES = frozenset({421, 451, 452})
_THROTTLE_WORDING = re.compile(r"too many|\brate\b|rate.?limit|throttl|slow down|exceeded|4\.7\.28",
                               re.IGNORECASE)

# Queue ids in 250 replies to DATA: Postfix "Ok: queued as 4Zx1y2", Exim "OK id=1rT-000abc-XY",
# Amazon SES SMTP "Ok 0100018e-...-000000".
_QUEUE_ID = (
    re.compile(r"queued as\s+<?([^\s>]+)", re.IGNORECASE),
    re.compile(r"\bid=<?([^\s>]+)", re.IGNORECASE),
    re.compile(r"^(?:[245]\.\d{1,3}\.\d{1,3}\s+)?ok:?\s+<?([^\s>]{6,})>?$", re.IGNORECASE),
)
_MESSAGE_ID_HEADER = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)?<?([^\s>]+)",
                                re.IGNORECASE | re.MULTILINE)

_QUIT_TIMEOUT_S = 2.0

# A bare dot-atom address (what the envelope nearly always is): its SMTP path is the address in angle
# brackets, without the RFC 5322 parse that aiosmtplib's quote_address makes of every address.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")


@dataclass(slots=True)
class _Connection:
    client: aiosmtplib.SMTP
    channel: pipelining.Channel
    transactions: int = 0
    last_used: float = 0.0


class _Slot:
    """A send's place among its lane's connections, given back once: when its body is handed over with the
    connection, or when the send ends."""

    __slots__ = ("_held", "_semaphore")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def take(self) -> None:
        await self._semaphore.acquire()
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


class _StaleConnection(Exception):
    """An idle connection the server had already closed; the send may go over a fresh one."""


class SmtpProvider:
    name = "smtp"

    def __init__(self, settings: Settings, *, local_hostname: str | None = None, max_idle_s: float = 30.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        if settings.smtp_use_tls and settings.smtp_starttls:
            raise ConfigError("JETMAIL_SMTP_USE_TLS and JETMAIL_SMTP_STARTTLS exclude each other: "
                              "use_tls is TLS from the first byte (port 465), starttls upgrades (port 587)")
        if settings.smtp_username and settings.smtp_password is None:
            raise ConfigError("JETMAIL_SMTP_PASSWORD is required when JETMAIL_SMTP_USERNAME is set")
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._timeout = settings.smtp_timeout_s
        self._use_tls = settings.smtp_use_tls
        self._starttls = settings.smtp_starttls
        self._username = settings.smtp_username
        self._password = settings.smtp_password  # SecretStr: revealed only to the client at connect
        self._tls_context = tls_context
        self._max_transactions = settings.smtp_max_messages_per_connection
        self._pipelining = settings.smtp_pipelining
        # Servers drop idle sessions (Postfix after 300 s, some relays after 10 s); reusing one
        # that old risks a "421 timeout" reply read as if it were about this message.
        self._max_idle_s = max_idle_s
        self._local_hostname = local_hostname
        self._slots = {lane: asyncio.Semaphore(settings.smtp_pool_size) for lane in ("transactional", "marketing")}
        # VERP: bounces come back to `bounces+<signed message id>@<bounce domain>` (jetmail bounce-server)
        self._bounce_domain = settings.bounce_domain
        self._signer = Signer(settings.signing_secret) if settings.bounce_domain else None
        self._dkim = DkimSigner.from_settings(settings)
        self._idle: list[_Connection] = []
        self._closed = False
        self.connections_opened = 0

    async def send(self, message: OutboundMessage) -> SendResult:
        if self._closed:
            raise RuntimeError("SmtpProvider is closed")
        if not message.recipients:
            raise PermanentDeliveryError("message has no recipients")
        message = self._with_return_path(message)
        if self._dkim is not None:
            message = await self._signed(message, self._dkim)
        lane = "marketing" if message.lane == "marketing" else "transactional"
        slot = _Slot(self._slots[lane])
        await slot.take()
        try:
            conn = self._take_idle(lane)
            if conn is not None:
                try:
                    return await self._transact(conn, message, reused=True, slot=slot)
                except _StaleConnection:
                    pass  # nothing was accepted on it: one attempt over a fresh connection
            conn = await self._open()
            return await self._transact(conn, message, reused=False, slot=slot)
        finally:
            slot.give_back()

    def _with_return_path(self, message: OutboundMessage) -> OutboundMessage:
        if self._signer is None or self._bounce_domain is None:
            return message
        address = verp_address(message.message_id, signer=self._signer, domain=self._bounce_domain)
        return message if address is None else replace(message, mail_from=address)

    @staticmethod
    async def _signed(message: OutboundMessage, signer: DkimSigner) -> OutboundMessage:
        try:
            # dkimpy's RSA is pure Python, milliseconds of CPU (docs/guide/bounces-smtp.md): off the event loop,
            # so the other sends' replies are still read meanwhile
            raw = await asyncio.to_thread(signer.sign, message.raw)
        except DkimSigningError as exc:
            raise PermanentDeliveryError(str(exc)) from None
        return replace(message, raw=raw)

    async def close(self) -> None:
        """Quit idle connections; connections still in use are quit when their send finishes."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._retire(conn) for conn in idle), return_exceptions=True)

    # ---- connections
    def _take_idle(self, lane: str) -> _Connection | None:
        """Most recently used first: it is the least likely to have been dropped by the server. A transactional
        send never takes a connection whose campaign message still waits for its reply: it would wait behind it."""
        now = time.monotonic()
        for index in range(len(self._idle) - 1, -1, -1):
            conn = self._idle[index]
            if not conn.client.is_connected:
                del self._idle[index]
            elif conn.channel.busy:
                if lane == "marketing":
                    del self._idle[index]
                    return conn
            else:
                del self._idle[index]
                if now - conn.last_used < self._max_idle_s:
                    return conn
                conn.client.close()
        return None

    async def _open(self) -> _Connection:
        if self._local_hostname is None:
            # getfqdn may ask DNS; once per provider rather than once per connection
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            timeout=self._timeout,
            use_tls=self._use_tls,
            start_tls=self._starttls,
            tls_context=self._tls_context,
            local_hostname=self._local_hostname,
            username=self._username,
            password=self._password.get_secret_value() if self._password is not None else None,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                # the MAIL options depend on the extensions EHLO lists (SIZE, 8BITMIME, SMTPUTF8)
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not client.is_connected:
                        raise
                    await client.helo()
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            # greeting, EHLO, STARTTLS or AUTH refused: the relay's problem or ours, not the message's
            raise TemporaryDeliveryError(
                f"SMTP session to {self._host}:{self._port} refused: {exc.code} {exc.message}",
                throttled=_is_throttle(exc.code, exc.message), code=exc.code,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise TemporaryDeliveryError(
                f"SMTP connection to {self._host}:{self._port} failed: {exc}") from None
        except BaseException:
            client.close()
            raise
        self.connections_opened += 1
        return _Connection(client=client, channel=pipelining.Channel(client))

    async def _release(self, conn: _Connection) -> None:
        conn.last_used = time.monotonic()
        if self._closed or conn.transactions >= self._max_transactions:
            # quit while still holding the slot, so no more sessions are open than the lanes have slots
            await self._retire(conn)
        else:
            self._idle.append(conn)

    def _hand_over(self, conn: _Connection, slot: _Slot, lane: str) -> bool:
        """Once a campaign message's body is written, its connection (and its slot) may carry the next transaction
        while the body's reply is still on its way; not when the connection is due to be retired. A transactional
        message keeps its connection until its reply, as the next one would not take it before (``_take_idle``)."""
        if lane != "marketing" or self._closed or conn.transactions >= self._max_transactions:
            return False
        conn.last_used = time.monotonic()
        self._idle.append(conn)
        slot.give_back()
        return True

    async def _retire(self, conn: _Connection) -> None:
        try:
            if conn.client.is_connected:
                # a body handed over with its connection may still be waiting for its reply
                await conn.channel.quiet(reply_timeout=self._timeout)
                await conn.client.quit(timeout=_QUIT_TIMEOUT_S)
        except (aiosmtplib.SMTPException, OSError):
            pass  # the server is not owed a clean goodbye
        finally:
            conn.client.close()

    async def _reset_or_discard(self, conn: _Connection) -> None:
        """After a refused transaction RSET, so the next MAIL starts clean; if that fails, drop it."""
        if conn.client.is_connected:
            try:
                await conn.client.rset()
            except (aiosmtplib.SMTPException, OSError):
                conn.client.close()
            else:
                await self._release(conn)
                return
        conn.client.close()

    # ---- one transaction
    async def _transact(self, conn: _Connection, message: OutboundMessage, *, reused: bool,
                        slot: _Slot) -> SendResult:
        client = conn.client
        conn.transactions += 1
        stage = "MAIL FROM"
        handed_over = False

        def hand_over() -> None:
            nonlocal handed_over
            handed_over = self._hand_over(conn, slot, message.lane)

        try:
            options = self._mail_options(client, message)
            encoding = "utf-8" if message.smtputf8 else "ascii"
            if self._pipelining and client.supports_extension("pipelining"):
                response = await self._pipelined(conn, message, options=options, encoding=encoding,
                                                 hand_over=hand_over)
                if not handed_over:
                    await self._release(conn)
                return self._result(message, response)
            await client.mail(message.mail_from, options=options, encoding=encoding)
            stage = "RCPT TO"
            refused: aiosmtplib.SMTPRecipientRefused | None = None
            for recipient in message.recipients:
                try:
                    await client.rcpt(recipient, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    # one recipient per message: any refusal is the message's outcome
                    refused = refused or exc
                    if not client.is_connected:
                        break
            if refused is not None:
                raise refused
            stage = "DATA"
            response = await client.data(message.raw)
        except DeliveryError:
            await self._release(conn)
            raise
        except aiosmtplib.SMTPResponseException as exc:
            stage = getattr(exc, "stage", stage)
            if reused and stage == "MAIL FROM" and exc.code == 421:
                client.close()
                raise _StaleConnection from None
            if handed_over and exc.code > 0:
                pass  # the reply to the body ended the transaction; the connection carries the next one already
            elif 400 <= exc.code < 600:
                await self._reset_or_discard(conn)
            else:
                client.close()  # a malformed reply (aiosmtplib's -1): the dialogue may be out of step
            raise _response_error(exc.code, exc.message, stage=stage, message=message,
                                  recipient=getattr(exc, "recipient", None)) from None
        except aiosmtplib.SMTPServerDisconnected as exc:
            client.close()
            stage = getattr(exc, "stage", stage)
            if reused and stage == "MAIL FROM":
                raise _StaleConnection from None
            raise TemporaryDeliveryError(f"SMTP connection lost at {stage}: {exc}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            # timeouts and transport errors leave the dialogue out of step: never reuse
            client.close()
            raise TemporaryDeliveryError(f"SMTP {stage} failed: {exc}") from None
        except ValueError as exc:
            # an address with control characters, or non-ASCII without SMTPUTF8: refused before sending
            await self._reset_or_discard(conn)
            raise PermanentDeliveryError(f"address cannot be sent over SMTP: {exc}") from None
        except BaseException:
            # cancelled mid-dialogue: the server's state is unknown. Once the body was handed over, its reply
            # comes, and is passed over, in turn: the dialogue stays in step for the next transaction
            if not handed_over:
                client.close()
            raise
        await self._release(conn)
        return self._result(message, response)

    def _result(self, message: OutboundMessage, response: aiosmtplib.SMTPResponse) -> SendResult:
        return SendResult(
            provider=self.name,
            provider_message_id=_queue_id(response.message) or _header_message_id(message.raw),
            accepted=tuple(message.recipients),
        )

    async def _pipelined(self, conn: _Connection, message: OutboundMessage, *, options: list[str],
                         encoding: str, hand_over: Callable[[], None]) -> aiosmtplib.SMTPResponse:
        """MAIL, RCPT... (and DATA for one recipient) in one write, then the body; ``hand_over`` is called once the
        body is written, before its reply. Raises what the unpipelined dialogue raises, with the failed step in
        the exception's ``stage``."""
        client, channel = conn.client, conn.channel
        with_data = len(message.recipients) == 1
        group = pipelining.command(b"MAIL", b"FROM:" + smtp_path(message.mail_from).encode(encoding),
                                   *(o.encode("ascii") for o in options))
        for recipient in message.recipients:
            group += pipelining.command(b"RCPT", b"TO:" + smtp_path(recipient).encode(encoding))
        if with_data:
            group += b"DATA\r\n"
        count = 1 + len(message.recipients) + with_data
        lost: pipelining.Interrupted | None = None
        try:
            replies = await channel.replies(channel.write(group, replies=count), reply_timeout=self._timeout)
        except pipelining.Interrupted as exc:
            # no body was sent, so nothing was accepted; a refusal that came first is the better reason
            exc.stage = "MAIL FROM"  # type: ignore[attr-defined]
            lost, replies = exc, exc.replies
        if any(reply.code == 421 for reply in replies):
            client.close()  # the server is closing the session (aiosmtplib closes on 421 too)
        mail, rcpts, data = replies[:1], replies[1:1 + len(message.recipients)], replies[1 + len(message.recipients):]
        failure: aiosmtplib.SMTPResponseException | None = None
        if not mail:
            assert lost is not None
            raise lost
        if mail[0].code != 250:
            mail_reply = mail[0]
            failure = aiosmtplib.SMTPResponseException(mail_reply.code, mail_reply.message)
            failure.stage = "MAIL FROM"  # type: ignore[attr-defined]
        else:
            for recipient, reply in zip(message.recipients, rcpts, strict=False):
                if reply.code not in (250, 251):
                    # one recipient per message: any refusal is the message's outcome
                    failure = aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
                    failure.stage = "RCPT TO"  # type: ignore[attr-defined]
                    break
        if failure is None and data and data[0].code != 354:
            failure = aiosmtplib.SMTPResponseException(data[0].code, data[0].message)
            failure.stage = "DATA"  # type: ignore[attr-defined]
        if failure is None and lost is not None:
            raise lost
        if failure is not None:
            if data and data[0].code == 354:
                # the server waits for a body we will not send: only closing ends that transaction
                client.close()
            raise failure
        try:
            if not with_data:
                return await client.data(message.raw)
            stuffed = pipelining.dot_stuffed(message.raw, crlf=message.crlf)
            body = channel.write(stuffed, replies=1)
            hand_over()
            (response,) = await channel.replies(body, reply_timeout=self._timeout)
        except aiosmtplib.SMTPException as exc:
            # the body may have reached the server: never the "nothing accepted" stage of a stale session
            exc.stage = "DATA"  # type: ignore[attr-defined]
            raise
        if response.code != 250:
            failure = aiosmtplib.SMTPResponseException(response.code, response.message)
            failure.stage = "DATA"  # type: ignore[attr-defined]
            raise failure
        return response

    @staticmethod
    def _mail_options(client: aiosmtplib.SMTP, message: OutboundMessage) -> list[str]:
        options: list[str] = []
        if client.supports_extension("size"):
            # RFC 1870 allows an estimate; the exact figure would cost a pass over the message
            options.append(f"SIZE={len(message.raw)}")
        if not message.raw.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if message.smtputf8:
            if not client.supports_extension("smtputf8"):
                raise PermanentDeliveryError("the SMTP server lacks SMTPUTF8, which this message needs")
            options.append("SMTPUTF8")
        return options


def smtp_path(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO; anything but a plain ASCII address goes through aiosmtplib's
    quote_address, which parses it and refuses characters that could break the command line (ValueError)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def _is_throttle(code: int, text: str) -> bool:
    return code in _THROTTLE_CODES and _THROTTLE_WORDING.search(text) is not None


def _response_error(code: int, text: str, *, stage: str, message: OutboundMessage | None = None,
                    recipient: str | None = None) -> DeliveryError:
    reason = f"{stage} refused: {code} {text}"
    if 500 <= code < 600:
        # a refused recipient (or a message refused for its only one) is a bounce, read as a DSN would be;
        # a refused MAIL FROM is about the sender, not the address
        if recipient is None and message is not None and stage == "DATA" and len(message.recipients) == 1:
            recipient = message.recipients[0]
        bounce = reject_event(message_id=message.message_id, recipient=recipient, code=code, text=text) \
            if message is not None and recipient and stage in ("RCPT TO", "DATA") else None
        return PermanentDeliveryError(reason, code=code, bounce=bounce)
    # 4xx, and anything malformed (aiosmtplib reports -1), says nothing final about the message
    return TemporaryDeliveryError(reason, throttled=_is_throttle(code, text), code=code)


def _queue_id(reply: str) -> str | None:
    for pattern in _QUEUE_ID:
        match = pattern.search(reply)
        if match:
            return match.group(1)
    return None


def _header_message_id(raw: bytes) -> str | None:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    match = _MESSAGE_ID_HEADER.search(raw if end < 0 else raw[:end])
    return match.group(1).decode("ascii", "replace") if match else None
