"""One HTTP POST to a receiver, made safe: the name is resolved once, the address is checked, and the
request goes to that very address (``Host`` and TLS SNI keep the name, and the certificate is verified
against it), so a DNS answer that changes between the check and the connection (rebinding) cannot turn
a webhook into a request to an internal service. Redirects are not followed; at most ``EXCERPT_BYTES``
of the answer are read.

h11 (the HTTP/1.1 state machine under httpx) frames the exchange: it writes the request and reads the
answer's status line, headers and body (Content-Length, chunked or up to the close), and says when the
connection may carry the next request. The connections are asyncio's own streams (``Client``), not httpx:
a delivery is always one small POST whose answer matters only by its status and first bytes, and httpx
spent ~3-4 ms of CPU on each (its connection pool, its async-library detection, its expiry checks), more
than everything else a webhook costs; this client spends ~0.3 ms, of which h11 is ~0.1 ms (POSTs to a
local receiver, measured on a shared 2-core machine). A connection is kept for the next POST to the same
address when h11 finished the exchange and allows another; a kept connection the receiver has closed
meanwhile costs one new connection, not a failed attempt.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import h11

EXCERPT_BYTES = 4096
HEADER_BYTES = 65536  # an answer's status line and headers, at most
IDLE_S = 30.0  # a kept connection unused this long is closed rather than reused
# kept connections per address, at most: as many as 20 delivery jobs POST at once (16 each), so that a burst
# of deliveries reuses its connections rather than opening and closing them (a tenth of a POST's CPU at 64)
IDLE_PER_ORIGIN = 320


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


class _Closed(ConnectionError):
    """The receiver closed the connection before any byte of an answer."""


# what a request target may hold as it is (RFC 3986's unreserved and reserved characters, and escapes)
_TARGET_SAFE = "/?:@!$&'()*+,;=-._~%[]"
_Origin = tuple[str, str, int, str]  # scheme, address, port, the name (SNI, certificate)


def _http() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_BYTES)


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=_http)
    heard: bool = False  # a byte of the current exchange's answer has arrived
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self) -> bool:
        return (self.http.our_state is h11.IDLE and self.http.their_state is h11.IDLE
                and not self.reader.at_eof() and not self.writer.is_closing()
                and time.monotonic() - self.idle_since < IDLE_S)

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True, slots=True)
class _Request:
    head: h11.Request
    body: bytes


@dataclass(slots=True)
class _Response:
    status: int
    excerpt: bytes
    whole: bool  # the answer was read to its end and h11 readied the connection for another request


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
            reader, writer = await asyncio.open_connection(address, port, ssl=self._context(), server_hostname=name)
        else:
            reader, writer = await asyncio.open_connection(address, port)
        return _Connection(reader, writer)

    async def post(self, origin: _Origin, request: _Request) -> _Response:
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
            except _Closed:
                connection.close()
                if kept:
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


async def _exchange(connection: _Connection, request: _Request) -> _Response:
    """Send ``request`` and read its answer's status and first ``EXCERPT_BYTES``, framed by h11. The connection
    is readied for the next request only when h11 says both sides are done and it may stay open; an answer
    longer than the excerpt is not read further, and its connection is not reused."""
    http = connection.http
    connection.heard = False
    try:
        connection.writer.write(http.send(request.head) + http.send(h11.Data(data=request.body))
                                + http.send(h11.EndOfMessage()))
        await connection.writer.drain()
        head = await _next(connection)
        while isinstance(head, h11.InformationalResponse):  # an answer such as 103 Early Hints comes first
            head = await _next(connection)
    except ConnectionError as exc:
        if connection.heard or isinstance(exc, _Closed):
            raise
        raise _Closed(str(exc)) from exc
    if not isinstance(head, h11.Response):
        raise h11.RemoteProtocolError(f"{type(head).__name__} instead of a response")
    excerpt = bytearray()
    try:
        # past EXCERPT_BYTES nothing more is read: only an end h11 already holds can still make the answer whole
        while len(excerpt) <= EXCERPT_BYTES:
            event = await _next(connection, read=len(excerpt) < EXCERPT_BYTES)
            if event is None:
                break
            if isinstance(event, h11.EndOfMessage):
                whole = http.our_state is h11.DONE and http.their_state is h11.DONE
                if whole:
                    http.start_next_cycle()
                return _Response(head.status_code, bytes(excerpt), whole=whole)
            if not isinstance(event, h11.Data):
                raise h11.RemoteProtocolError(f"{type(event).__name__} within a response's body")
            excerpt += event.data
    except (h11.RemoteProtocolError, ConnectionError):
        pass  # the status is what counts; a body cut short is still an excerpt
    return _Response(head.status_code, bytes(excerpt[:EXCERPT_BYTES]), whole=False)


async def _next(connection: _Connection, *, read: bool = True) -> h11.Event | None:
    """h11's next event of the answer, reading from the connection as h11 needs (None: h11 needs more and
    ``read`` is off)."""
    http = connection.http
    while True:
        event = http.next_event()
        if isinstance(event, h11.Event):
            return event
        if event is h11.PAUSED:  # only after an answer's end, where no event is asked for
            raise h11.RemoteProtocolError("the connection is paused")
        if not read:
            return None
        data = await connection.reader.read(EXCERPT_BYTES)
        if not data and not connection.heard:
            raise _Closed("the receiver closed the connection without answering")
        connection.heard = True
        http.receive_data(data)


@functools.lru_cache(maxsize=1024)
def _parts(url: str) -> tuple[str, str, int, str, str, tuple[tuple[bytes, bytes], ...]]:
    """What every POST to ``url`` shares, worked out once per URL: scheme, host, port, the name for SNI and
    certificate checks, the request target, and the headers that do not change (``Host`` keeps the URL's name)."""
    parts = urlsplit(url)
    host, port = _host_port(url)
    name = host if host.isascii() else host.encode("idna").decode("ascii")
    name_in_host = f"[{name}]" if ":" in name else name  # an IPv6 literal in brackets
    host_header = name_in_host if parts.port is None else f"{name_in_host}:{parts.port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    fixed = ((b"Host", host_header.encode("latin-1")), (b"Content-Type", b"application/json"),
             (b"User-Agent", b"jetmail-webhooks"))
    return parts.scheme, host, port, name, target, fixed


def _request(url: str, *, address: str, body: bytes, headers: Mapping[str, str]) -> tuple[_Origin, _Request]:
    """Where ``url``'s POST goes (its checked ``address``) and the request."""
    scheme, _, port, name, target, fixed = _parts(url)
    # h11 refuses a header that would not stay on its line (LocalProtocolError)
    head = h11.Request(method="POST", target=target,
                       headers=[*fixed, (b"Content-Length", str(len(body)).encode()),
                                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())])
    return (scheme, address, port, name), _Request(head, body)


async def post(client: Client, url: str, *, body: bytes, headers: dict[str, str],
               allow_private: bool, address: str | None = None) -> Answer:
    """POST ``body`` to ``url`` (at ``address``, from ``destination``, when given); raises UnsafeDestination
    before connecting anywhere it may not. The whole exchange (connecting included) has ``client.timeout_s``."""
    if address is None:
        host, port = _host_port(url)
        address = await resolve(host, port, allow_private=allow_private)
    started = time.perf_counter()
    try:
        origin, request = _request(url, address=address, body=body, headers=headers)
        async with asyncio.timeout(client.timeout_s):
            response = await client.post(origin, request)
    except TimeoutError:
        return Answer(status=None, latency_ms=_ms(started), excerpt="",
                      error=f"Timeout: no answer within {client.timeout_s:g} s")
    except (OSError, ValueError, h11.ProtocolError) as exc:  # ssl.SSLError is an OSError, UnicodeError a ValueError
        return Answer(status=None, latency_ms=_ms(started), excerpt="", error=f"{type(exc).__name__}: {exc}"[:300])
    return Answer(status=response.status, latency_ms=_ms(started),
                  excerpt=response.excerpt.decode("utf-8", "replace"))


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
