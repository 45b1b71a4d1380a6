"""One HTTP POST to a receiver, made safe: the name is resolved once, the address is checked, and the
request goes to that very address (``Host`` and TLS SNI keep the name, and the certificate is verified
against it), so a DNS answer that changes between the check and the connection (rebinding) cannot turn
a webhook into a request to an internal service. Redirects are not followed; at most ``EXCERPT_BYTES``
of the answer are read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

EXCERPT_BYTES = 4096


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
    except socket.gaierror as exc:
        raise UnsafeDestination(f"{host} does not resolve: {exc.strerror}") from None
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


async def post(client: httpx.AsyncClient, url: str, *, body: bytes, headers: dict[str, str],
               allow_private: bool, address: str | None = None) -> Answer:
    """POST ``body`` to ``url`` (at ``address``, from ``destination``, when given); raises UnsafeDestination
    before connecting anywhere it may not."""
    parts = urlsplit(url)
    host, port = _host_port(url)
    if address is None:
        address = await resolve(host, port, allow_private=allow_private)
    literal = f"[{address}]" if ":" in address else address
    target = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    request = client.build_request("POST", target, content=body, extensions=extensions,
                                   headers={**headers, "Host": host_header, "Content-Type": "application/json",
                                            "User-Agent": "jetmail-webhooks"})
    started = time.perf_counter()
    try:
        response = await client.send(request, stream=True, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Answer(status=None, latency_ms=_ms(started), excerpt="", error=f"{type(exc).__name__}: {exc}"[:300])
    try:
        kept = bytearray()
        async for chunk in response.aiter_raw():
            kept += chunk
            if len(kept) >= EXCERPT_BYTES:
                break
    except httpx.HTTPError:
        pass  # the status is what counts; a body cut short is still an excerpt
    finally:
        await response.aclose()
    return Answer(status=response.status_code, latency_ms=_ms(started),
                  excerpt=bytes(kept[:EXCERPT_BYTES]).decode("utf-8", "replace"))


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
