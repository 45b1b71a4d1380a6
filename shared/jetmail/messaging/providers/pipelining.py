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

import aiosmtplib
from aiosmtplib import SMTPResponse

# What aiosmtplib itself refuses in a command argument (C0 controls and DEL allow command injection)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_MAX_REPLY_BYTES = 64 * 1024


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


class _Collector(asyncio.Protocol):
    """Parses every complete reply that arrives, in order, for the exchange waiting on them."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self.replies: list[SMTPResponse] = []
        self.error: Exception | None = None
        self.changed = asyncio.Event()
        self._buffer = bytearray()
        self._lines: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end + 1]).rstrip(b"\r\n")
            del self._buffer[:end + 1]
            if len(line) < 3 or not line[:3].isdigit():
                self.error = aiosmtplib.SMTPResponseException(-1, f"malformed SMTP reply line: {line[:80]!r}")
                break
            self._lines.append(line)
            if line[3:4] != b"-":
                text = b"\n".join(part[4:].strip() for part in self._lines)
                self.replies.append(SMTPResponse(int(line[:3]), text.decode("utf-8", "surrogateescape")))
                self._lines = []
        if len(self._buffer) > _MAX_REPLY_BYTES and self.error is None:
            self.error = aiosmtplib.SMTPResponseException(-1, "SMTP reply too long")
        self.changed.set()

    def eof_received(self) -> bool:
        self.error = self.error or aiosmtplib.SMTPServerDisconnected("connection closed by the server")
        self.changed.set()
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = self.error or aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc or 'closed'}")
        self.changed.set()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def exchange(client: aiosmtplib.SMTP, payload: bytes, *, replies: int,
                   reply_timeout: float | None) -> list[SMTPResponse]:
    """Write ``payload`` (one or more commands) at once and return the first ``replies`` replies.

    Raises Interrupted (an SMTPServerDisconnected) when the connection ends first, SMTPReadTimeoutError when a reply
    is late, SMTPResponseException(-1) for a malformed reply; in those cases the connection's state
    is unknown and the caller closes it."""
    transport = client.transport
    protocol = client.protocol
    if transport is None or protocol is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("connection lost")
    collector = _Collector(protocol)
    transport.set_protocol(collector)
    try:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(payload)
        while len(collector.replies) < replies:
            if isinstance(collector.error, aiosmtplib.SMTPServerDisconnected):
                raise Interrupted(str(collector.error), collector.replies)
            if collector.error is not None:
                raise collector.error
            collector.changed.clear()
            try:
                # a timeout scope rather than wait_for: no task made per reply awaited
                async with asyncio.timeout(reply_timeout):
                    await collector.changed.wait()
            except TimeoutError:
                raise aiosmtplib.SMTPReadTimeoutError("timed out waiting for the server's replies") from None
        return collector.replies[:replies]
    finally:
        if not transport.is_closing():
            transport.set_protocol(protocol)
