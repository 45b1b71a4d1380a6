"""``jetmail bounce-server``: the MX of the bounce domain, where DSNs and complaints come back (aiosmtpd).

It receives mail only for addresses at ``JETMAIL_BOUNCE_DOMAIN`` (``550 5.1.1`` for any other: never a
relay), with no AUTH, from any sender, the null sender of a DSN included. Each message of at most
``JETMAIL_BOUNCE_MAX_BYTES`` (552 above it) is read by ``jetmail.deliverability.bounces`` and answered
``250`` whatever it turned out to be: a forged or unreadable report is logged and dropped, never bounced
back (that would be backscatter). Only an internal failure answers ``451``, so the sending MTA retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from jetmail.deliverability.bounces import BounceIntake
from jetmail.messaging.smtp_server import COMMAND_CALL_LIMIT, CappedSMTP, ConnectionCap

if TYPE_CHECKING:
    from jetmail.config import Settings
    from jetmail.services import Services

log = logging.getLogger("jetmail.deliverability.bounce_server")

MAX_RECIPIENTS = 100  # one report names one return path; a little room for a relay that batches them
MAX_CONNECTIONS_PER_IP = 20
TIMEOUT_S = 300.0  # RFC 5321 4.5.3.2: servers wait at least five minutes for a command or the data


class BounceSMTP(CappedSMTP):
    """The capped protocol with a precise size refusal."""

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and status.startswith("552 Error"):
            handler: BounceHandler = self.event_handler
            status = f"552 5.3.4 Message exceeds the size limit of {handler.max_bytes} bytes"
        await super().push(status)


class BounceHandler:
    """aiosmtpd hooks: take mail for the bounce domain only, read each message as a report."""

    def __init__(self, intake: BounceIntake, *, domain: str, max_bytes: int) -> None:
        self.intake = intake
        self.domain = domain.lower()
        self.max_bytes = max_bytes

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        _, at, domain = address.rpartition("@")
        if not at or domain.lower().rstrip(".") != self.domain:
            return (f"550 5.1.1 <{address[:200]}>: no such mailbox here; "
                    f"this server receives mail for @{self.domain} only")
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 Too many recipients: at most {MAX_RECIPIENTS} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        outcome = await asyncio.to_thread(self.intake.process, content, envelope_to=list(envelope.rcpt_tos))
        return f"250 2.0.0 Ok: {outcome.kind.replace('_', ' ')}"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("bounce intake failed: %s", error)
        return "451 4.3.0 Temporary server error; try again later"


def handler_for(services: Services, settings: Settings) -> BounceHandler:
    if not settings.bounce_domain:
        from jetmail.config import ConfigError

        raise ConfigError("JETMAIL_BOUNCE_DOMAIN is not set: the bounce server receives mail for that domain only")
    return BounceHandler(BounceIntake.from_services(services), domain=settings.bounce_domain,
                         max_bytes=settings.bounce_max_bytes)


async def serve(services: Services, *, ready: Callable[[int], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Listen on ``bounce_host:bounce_port`` until ``stop`` is set (or forever); ``ready`` gets the bound port."""
    settings = services.settings
    handler = handler_for(services, settings)
    cap = ConnectionCap(MAX_CONNECTIONS_PER_IP)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BounceSMTP(handler, cap=cap, data_size_limit=settings.bounce_max_bytes, enable_SMTPUTF8=True,
                           hostname=settings.bounce_domain, ident="jetmail ESMTP bounces", timeout=TIMEOUT_S,
                           command_call_limit=COMMAND_CALL_LIMIT),
        host=settings.bounce_host, port=settings.bounce_port)
    port = int(server.sockets[0].getsockname()[1])
    log.info("bounce intake for @%s listening on %s", settings.bounce_domain, port)
    if ready is not None:
        ready(port)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        server.close()
