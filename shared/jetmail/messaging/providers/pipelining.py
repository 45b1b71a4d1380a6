"""RFC 2920 command pipelining on an open aiosmtplib connection.

aiosmtplib waits for each reply before the next command, and its protocol keeps one pending reply:
replies that arrive before they are asked for are dropped. So a pipelined group (MAIL, RCPT..., DATA
in one write) reads its replies through a collector that this module puts in front of the
connection's protocol for the length of the exchange (``transport.set_protocol``, a public asyncio
API), and puts aiosmtplib's protocol back afterwards; RSET, QUIT and the unpipelined path keep using
aiosmtplib as before. A lost connection is passed on to aiosmtplib's protocol, so the client knows.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

import aiosmtplib
from aiosmtplib import SMTPResponse

# What aiosmtplib itself refuses in a command argument (C0 controls and DEL allow command injection)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_MAX_REPLY_BYTES = 64 * 1024
T = TypeVar("T")


class Interrupted(aiosmtplib.SMTPServerDisconnected):
    """The connection ended before every reply came; ``replies`` holds those that did (a relay often
    closes right after a 421, and that reply is the reason worth reporting)."""

    def __init__(self, message: str, replies: list[SMTPResponse]) -> None:
        super().__init__(message)
        self.replies = replies


def command(*parts: bytes) -> bytes:
    """One command line; raises ValueError for a control character in any part (as aiosmtplib does)."""
    for part in parts:
        if _CONTROL.search(part):
            raise ValueError("command argument contains a control character")
    return b" ".join(parts) + b"\r\n"


def dot_stuffed(raw: bytes, *, crlf: bool = False) -> bytes:
    """The message as DATA sends it: CRLF line endings, leading periods doubled, the final ``.``.
    ``crlf``: every line of ``raw`` already ends in CRLF (as ``jetmail.messaging.mime`` builds them)."""
    body = raw
    if not crlf:
        # every CR, LF and CRLF becomes CRLF (a CR before a CRLF is a line of its own, as a lone CR is)
        body = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b"\r\n." in body:
        body = body.replace(b"\r\n.", b"\r\n..")
    return (b"." + body if body.startswith(b".") else body) + b".\r\n"


class _Pending:
    """A write's replies as they come; ``done`` when ``count`` have (or the connection failed)."""

    __slots__ = ("count", "done", "replies")

    def __init__(self, count: int, done: asyncio.Future[list[SMTPResponse]]) -> None:
        self.count = count
        self.done = done
        self.replies: list[SMTPResponse] = []


class _Collector(asyncio.Protocol):
    """Parses every complete reply that arrives and hands them, in order, to the writes waiting on them."""

    def __init__(self, inner: asyncio.BaseProtocol, channel: Channel) -> None:
        self.inner = inner
        self.channel = channel
        self.pending: deque[_Pending] = deque()
        self.error: Exception | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while self.error is None and (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end + 1]).rstrip(b"\r\n")
            del self._buffer[:end + 1]
            if len(line) < 3 or not line[:3].isdigit():
                self._fail(aiosmtplib.SMTPResponseException(-1, f"malformed SMTP reply line: {line[:80]!r}"))
                return
            self._lines.append(line)
            if line[3:4] != b"-":
                text = b"\n".join(part[4:].strip() for part in self._lines)
                self._lines = []
                self._reply(SMTPResponse(int(line[:3]), text.decode("utf-8", "surrogateescape")))
        if len(self._buffer) > _MAX_REPLY_BYTES:
            self._fail(aiosmtplib.SMTPResponseException(-1, "SMTP reply too long"))

    def _reply(self, reply: SMTPResponse) -> None:
        if not self.pending:
            # a reply nobody asked for: the dialogue is out of step
            self._fail(aiosmtplib.SMTPResponseException(-1, f"unexpected SMTP reply: {reply.code}"))
            return
        head = self.pending[0]
        head.replies.append(reply)
        if len(head.replies) < head.count:
            return
        self.pending.popleft()
        if not head.done.done():  # its waiter may have been cancelled
            head.done.set_result(head.replies)
        if not self.pending:
            if self._buffer or self._lines:
                self._fail(aiosmtplib.SMTPResponseException(-1, "unexpected SMTP reply"))
                return
            self.channel.settled()

    def _fail(self, error: Exception) -> None:
        self.error = self.error or error
        self.channel.ended()
        while self.pending:
            head = self.pending.popleft()
            if head.done.done():
                continue
            if isinstance(self.error, aiosmtplib.SMTPServerDisconnected):
                head.done.set_exception(Interrupted(str(self.error), head.replies))
            else:
                head.done.set_exception(self.error)

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("connection closed by the server"))
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc or 'closed'}"))
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class Channel:
    """Pipelined writes on one open connection. Each write's replies are the next ones after those of the writes
    before it, so a write need not wait for earlier ones' replies: the next transaction's MAIL, RCPT and DATA can
    follow a message's body before that body's reply has come (RFC 2920 section 3.2's example does just this).
    Writes made in the same turns of the event loop go out together, in one segment.

    While replies are outstanding the collector reads the connection; once none are, aiosmtplib's protocol is
    back, and the client's own commands (RSET, QUIT, the unpipelined dialogue) may be used again: ``quiet()``
    waits for that. A write's replies are waited for with ``replies()``."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self._collector: _Collector | None = None
        self._outgoing: list[bytes] = []
        self._quiet: asyncio.Future[None] | None = None  # made when someone waits for quiet()

    @property
    def busy(self) -> bool:
        """Replies are outstanding."""
        return self._collector is not None

    def write(self, payload: bytes, *, replies: int) -> _Pending:
        """Write ``payload`` (one or more commands, or a body); its ``replies`` replies come to ``replies()``."""
        transport = self.client.transport
        protocol = self.client.protocol
        if transport is None or protocol is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        collector = self._collector
        if collector is None:
            collector = self._collector = _Collector(protocol, self)
            transport.set_protocol(collector)
        elif collector.error is not None:
            raise collector.error
        loop = asyncio.get_running_loop()
        pending = _Pending(replies, loop.create_future())
        collector.pending.append(pending)
        if not self._outgoing:
            # two turns later: a send handed this connection after a body wakes in the next turn, and its MAIL,
            # RCPT and DATA join the body
            loop.call_soon(loop.call_soon, self._flush)
        self._outgoing.append(payload)
        return pending

    def _flush(self) -> None:
        outgoing, self._outgoing = b"".join(self._outgoing), []
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(outgoing)

    async def replies(self, pending: _Pending, *, reply_timeout: float | None) -> list[SMTPResponse]:
        """A write's replies. Raises Interrupted (an SMTPServerDisconnected) when the connection ends first,
        SMTPReadTimeoutError when they are late, SMTPResponseException(-1) for a malformed reply; in those
        cases the connection's state is unknown and the caller closes it."""
        return await _in_time(pending.done, reply_timeout)

    def settled(self) -> None:
        """Every reply came: aiosmtplib reads the connection again."""
        collector, self._collector = self._collector, None
        transport = self.client.transport
        if collector is not None and transport is not None and not transport.is_closing():
            transport.set_protocol(collector.inner)
        self.ended()

    def ended(self) -> None:
        """No reply is outstanding any more: every one came, or the connection failed."""
        if self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)
        self._quiet = None

    async def quiet(self, *, reply_timeout: float | None) -> None:
        """Wait until no reply is outstanding (raises as ``replies`` does)."""
        collector = self._collector
        if collector is None:
            return
        if collector.error is None:
            if self._quiet is None:
                self._quiet = asyncio.get_running_loop().create_future()
            # shielded: one waiter timing out must not end the others' wait
            await _in_time(asyncio.shield(self._quiet), reply_timeout)
        if collector.error is not None:
            raise collector.error


async def _in_time(reply: Awaitable[T], reply_timeout: float | None) -> T:
    """``reply``, or SMTPReadTimeoutError after ``reply_timeout`` seconds (a timeout scope rather than wait_for:
    no task made per reply awaited)."""
    try:
        async with asyncio.timeout(reply_timeout):
            return await reply
    except TimeoutError:
        raise aiosmtplib.SMTPReadTimeoutError("timed out waiting for the server's replies") from None
