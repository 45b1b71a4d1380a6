"""Opening the NATS connection the job layer runs on."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client as NATS

from .config import QueueConfig
from .errors import QueueError

log = logging.getLogger("jetmail.queue")


async def connect_nats(config: QueueConfig, *, name: str | None = None) -> NATS:
    """Connect, then keep reconnecting for the life of the process.

    nats-py retries an unreachable server forever when reconnects are unlimited, even on the very first
    connect; the outer deadline turns that into a clear error at start instead of a silent hang.
    """

    last_error: list[str] = []

    async def on_error(exc: Exception) -> None:
        last_error[:] = [str(exc) or type(exc).__name__]
        log.warning("nats: %s", last_error[0])

    client: list[NATS] = []

    async def on_disconnect() -> None:
        # nats-py reports its own close() as a disconnect too; only an unplanned one is worth a warning
        if client and not client[0].is_closed:
            log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    options: dict[str, Any] = {
        "servers": config.servers,
        "name": name or config.client_name,
        "connect_timeout": config.connect_timeout,
        "reconnect_time_wait": 1,
        "max_reconnect_attempts": -1,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if config.creds_file:
        options["user_credentials"] = config.creds_file
    elif config.user:
        options["user"] = config.user
        options["password"] = config.password or ""
    if config.tls_ca_file or config.tls_ca_pem:
        options["tls"] = tls_context(config)
    try:
        nc = await asyncio.wait_for(nats.connect(**options), timeout=config.connect_timeout + 1)
    except TimeoutError:
        reason = f"no server answered within {config.connect_timeout + 1:g}s"
        if last_error:
            reason += f" (last error: {last_error[0]})"
        raise QueueError(f"cannot connect to NATS at {config.nats_url}: {reason}") from None
    except ssl.SSLCertVerificationError as exc:
        raise QueueError(f"cannot connect to NATS at {config.nats_url}: the server's certificate is not trusted "
                         f"({exc.verify_message})") from None
    except (OSError, nats.errors.Error) as exc:
        reason = str(exc) or type(exc).__name__
        raise QueueError(f"cannot connect to NATS at {config.nats_url}: {reason}") from None
    client.append(nc)
    return nc


def tls_context(config: QueueConfig) -> ssl.SSLContext:
    """A client context that trusts only the configured CA (not the system's): certificate and host name are
    checked, TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=config.tls_ca_file or None, cadata=config.tls_ca_pem or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        where = config.tls_ca_file or "the CA PEM setting"
        raise QueueError(f"cannot load the NATS TLS CA from {where}: {exc}") from None
    return context
