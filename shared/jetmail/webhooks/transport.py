"""One HTTP POST to a receiver, made safe: the name is resolved once, the address is checked, and the
request goes to that very address (``Host`` and TLS SNI keep the name, and the certificate is verified
against it), so a DNS answer that changes between the check and the connection (rebinding) cannot turn
a webhook into a request to an internal service. Redirects are not followed; at most ``EXCERPT_BYTES``
of the answer are read.

The request is HTTP/1.1 on asyncio's own streams (``Client``), not a general HTTP library: a delivery is
always one small POST whose answer matters only by its status and first bytes, and httpx spent ~4 ms of
CPU on each (its connection pool, its async-library detection, its expiry checks): more than everything
else a webhook costs. A connection is kept for the next POST to the same address when its answer was read
whole; a kept connection the receiver has closed meanwhile costs one new connection, not a failed attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

EXCERPT_BYTES = 4096
HEADER_BYTES = 65536  # an answer's status line and headers, at most
IDLE_S = 30.0  # a kept connection unused this long is closed rather than reused
IDLE_PER_ORIGIN = 64  # kept connections per address, at most


class UnsafeDestination(Exception):
    """The URL's host resolves to an address webhooks may not reach (or does not resolve)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: no HTTP answer (timeout, refused connection)
    latency_ms: int
    excerpt: str
    error: str | None = None


def is_forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified or not ip.is_global)


async def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The one address the request will go to: the first the resolver gives, refused when not public
    (and ``allow_private`` is off)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeDestination(f"{host} does not resolve: {getattr(exc, 'strerror', None) or exc}") from None
    if not infos:
        raise UnsafeDestination(f"{host} does not resolve")
    address = str(infos[0][4][0])
    if not allow_private and is_forbidden(address):
        raise UnsafeDestination(f"{host} resolves to {address}, a private or reserved address "
                                "(JETMAIL_WEBHOOK_ALLOW_PRIVATE allows it)")
    return address


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


async def destination(url: str, *, allow_private: bool) -> str:
    """The checked address of ``url``'s host (``resolve``), for several POSTs to it in a row."""
    host, port = _host_port(url)
    return await resolve(host, port, allow_private=allow_private)


class _Invalid(Exception):
    """The receiver's answer is not HTTP/1.x as this client reads it."""


# what a request target may hold as it is (RFC 3986's unreserved and reserved characters, and escapes)
_TARGET_SAFE = "/?:@!$&'()*+,;=-._~%[]"
_Origin = tuple[str, str, int, str]  # scheme, address, port, the name (SNI, certificate)


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self) -> bool:
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and time.monotonic() - self.idle_since < IDLE_S)

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class _Response:
    status: int
    excerpt: bytes
    whole: bool  # the answer was read to its end and the connection may carry another request
    error: str | None = None


class Client:
    """Keeps connections per checked address for the POSTs that follow; made once per worker."""

    def __init__(self, *, timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.timeout_s = timeout_s
        self._tls = tls
        self._idle: dict[_Origin, list[_Connection]] = {}

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            import httpx  # its context: the trust store (certifi's) webhooks were verified with before

            self._tls = httpx.create_ssl_context(trust_env=False)
        return self._tls

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _take(self, origin: _Origin) -> _Connection | None:
        kept = self._idle.get(origin)
        while kept:
            connection = kept.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _keep(self, origin: _Origin, connection: _Connection) -> None:
        kept = self._idle.setdefault(origin, [])
        if len(kept) >= IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        kept.append(connection)

    async def _open(self, origin: _Origin) -> _Connection:
        scheme, address, port, name = origin
        if scheme == "https":
            reader, writer = await asyncio.open_connection(address, port, ssl=self._context(), server_hostname=name,
                                                           limit=HEADER_BYTES)
        else:
            reader, writer = await asyncio.open_connection(address, port, limit=HEADER_BYTES)
        return _Connection(reader, writer)

    async def post(self, origin: _Origin, request: bytes) -> _Response:
        """Send ``request`` on a kept connection to ``origin`` or a new one, and read the answer's status and
        excerpt. A kept connection that fails before any byte of an answer is replaced once by a new one
        (the receiver closed it while it was idle)."""
        connection = self._take(origin)
        kept = connection is not None
        while True:
            if connection is None:
                connection = await self._open(origin)
            try:
                response = await _exchange(connection, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                connection.close()
                if kept and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                    connection, kept = None, False
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            if response.whole:
                self._keep(origin, connection)
            else:
                connection.close()
            return response


async def _exchange(connection: _Connection, request: bytes) -> _Response:
    connection.writer.write(request)
    await connection.writer.drain()
    reader = connection.reader
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers, persistent = _head(head)
        if not 100 <= status < 200 or status == 101:
            break  # an informational answer (103 Early Hints) comes before the real one
    if status in (204, 304) or 100 <= status < 200:
        return _Response(status, b"", whole=persistent and status != 101)
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            excerpt, whole = await _chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise _Invalid("negative Content-Length")
            excerpt = await reader.readexactly(min(length, EXCERPT_BYTES))
            whole = length <= EXCERPT_BYTES
        else:  # the answer ends when the receiver closes the connection
            excerpt = await _until_closed(reader)
            whole = False
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, _Invalid) as exc:
        # the status is what counts; a body cut short is still an excerpt
        partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
        return _Response(status, partial[:EXCERPT_BYTES], whole=False)
    return _Response(status, excerpt[:EXCERPT_BYTES], whole=whole and persistent)


def _head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """The status, the headers (lower-case names) and whether the connection stays open after the answer."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise _Invalid(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise _Invalid(f"malformed header line: {line[:80]!r}")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    persistent = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return int(code), headers, persistent


async def _chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """A chunked body's first ``EXCERPT_BYTES``, and whether it was read to its end (trailers included)."""
    kept = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(kept), True
        if len(kept) + size > EXCERPT_BYTES:
            kept += await reader.readexactly(EXCERPT_BYTES - len(kept))
            return bytes(kept), False
        kept += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise _Invalid("a chunk does not end in CRLF")


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    kept = bytearray()
    while len(kept) < EXCERPT_BYTES:
        chunk = await reader.read(EXCERPT_BYTES - len(kept))
        if not chunk:
            break
        kept += chunk
    return bytes(kept)


def _request(url: str, *, address: str, body: bytes, headers: Mapping[str, str]) -> tuple[_Origin, bytes]:
    """Where ``url``'s POST goes (its checked ``address``) and its bytes: ``Host`` keeps the URL's name."""
    parts = urlsplit(url)
    host, port = _host_port(url)
    name = host if host.isascii() else host.encode("idna").decode("ascii")
    name_in_host = f"[{name}]" if ":" in name else name  # an IPv6 literal in brackets
    host_header = name_in_host if parts.port is None else f"{name_in_host}:{parts.port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}", "Content-Type: application/json",
             "User-Agent: jetmail-webhooks", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if any(c in line for line in lines for c in "\r\n\0"):
        raise _Invalid("a header would not stay on its line")
    return (parts.scheme, address, port, name), ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def post(client: Client, url: str, *, body: bytes, headers: dict[str, str],
               allow_private: bool, address: str | None = None) -> Answer:
    """POST ``body`` to ``url`` (at ``address``, from ``destination``, when given); raises UnsafeDestination
    before connecting anywhere it may not. The whole exchange (connecting included) has ``client.timeout_s``."""
    host, port = _host_port(url)
    if address is None:
        address = await resolve(host, port, allow_private=allow_private)
    started = time.perf_counter()
    try:
        origin, request = _request(url, address=address, body=body, headers=headers)
        async with asyncio.timeout(client.timeout_s):
            response = await client.post(origin, request)
    except TimeoutError:
        return Answer(status=None, latency_ms=_ms(started), excerpt="",
                      error=f"Timeout: no answer within {client.timeout_s:g} s")
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, ValueError,
            UnicodeError, _Invalid) as exc:
        return Answer(status=None, latency_ms=_ms(started), excerpt="", error=f"{type(exc).__name__}: {exc}"[:300])
    return Answer(status=response.status, latency_ms=_ms(started),
                  excerpt=response.excerpt.decode("utf-8", "replace"), error=response.error)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
