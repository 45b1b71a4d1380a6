"""The worker side of one message: claim, render, build, send, record.

Claiming is a conditional write (``queued|scheduled|sending → sending``): a job redelivered after
the message was sent, failed or cancelled finds it in a final state and does nothing, so a
redelivered job never sends twice.

An SMTP server commits a message when it receives the final ``.`` of DATA, whether or not the
sender lives to read its ``250``. If a worker dies between that moment and the ``sent`` write (one
DynamoDB request), the message stays ``sending`` and its job is redelivered: jetmail then sends it
again, with the same ``Message-ID`` header. It favours delivery over silence; a worker that dies
anywhere earlier (rendering, the SMTP dialogue before the final ``.``) loses nothing and
duplicates nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from jetmail.compose import Composer, Recipient
from jetmail.feedback import record_sends
from jetmail.messages import FINAL_BEFORE_SEND, MessageRepository, MessageStatus, now_iso
from jetmail.providers import OutboundMessage, PermanentDeliveryError, Provider, TemporaryDeliveryError
from jetmail.ratelimit import RateLimiter
from jetmail.reputation import count_sent
from jetmail.simulator import Simulator
from jetmail.storage.table import ConditionFailed, Table
from jetmail.suppressions import SuppressionStore, blocks
from jetmail.template_store import TemplateNotFound, TemplateStore
from jetmail.templating import TemplateRenderError

logger = logging.getLogger("jetmail.delivery")

CLAIMABLE = {MessageStatus.QUEUED, MessageStatus.SCHEDULED, MessageStatus.SENDING}


class DeliveryOutcome:
    SKIPPED = "skipped"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"


class Deliverer:
    def __init__(self, *, messages: MessageRepository, templates: TemplateStore, composer: Composer,
                 provider: Provider, suppressions: SuppressionStore, simulator: Simulator | None = None,
                 limiter: RateLimiter | None = None, js: Any = None, stats: Table | None = None) -> None:
        self.stats = stats
        self.suppressions = suppressions
        self.limiter = limiter
        self.js = js
        self.simulator = simulator
        self.messages = messages
        self.templates = templates
        self.composer = composer
        self.provider = provider

    async def deliver(self, message_id: str, *, attempt: int, max_attempts: int) -> str:
        """Send one transactional message; raises TemporaryDeliveryError when the job should retry."""
        item = await asyncio.to_thread(self.messages.get, message_id)
        if MessageStatus(item["status"]) in FINAL_BEFORE_SEND:
            return DeliveryOutcome.SKIPPED
        # checked at send time, not only at submit: the address may have bounced since
        entry = await asyncio.to_thread(self.suppressions.get, item["to"])
        if entry is not None and blocks(entry.reason, category=item.get("category") or "transactional"):
            try:
                await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.SUPPRESSED,
                                        allowed_from=CLAIMABLE, detail=f"suppressed: {entry.reason}")
            except ConditionFailed:
                pass
            return DeliveryOutcome.SKIPPED
        try:
            item = await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.SENDING,
                                           allowed_from=CLAIMABLE, count_attempt=True,
                                           detail=f"attempt {attempt}")
        except ConditionFailed:
            return DeliveryOutcome.SKIPPED  # cancelled or finished in between
        recipient = Recipient(email=item["to"], name=item.get("to_name"), language=item.get("language"),
                              timezone=item.get("timezone"))
        try:
            version = await asyncio.to_thread(self.templates.resolve, item["template"], item.get("language"))
            rendered = self.composer.render(version, json.loads(item.get("context") or "{}"), recipient=recipient,
                                            message_id=message_id)
            # marketing mail carries RFC 8058 one-click List-Unsubscribe headers on every path
            unsubscribe = (self.composer.unsubscribe_url(message_id=message_id, email=recipient.email)
                           if version.category == "marketing" else None)
            built = self.composer.build(rendered, message_id=message_id, recipient=recipient,
                                        from_addr=item.get("from_addr"), reply_to=item.get("reply_to"),
                                        list_unsubscribe=unsubscribe)
        except (TemplateNotFound, TemplateRenderError, ValueError) as exc:
            await self._fail(message_id, f"cannot render: {exc}")
            return DeliveryOutcome.FAILED
        outbound = OutboundMessage(
            mail_from=_envelope_from(item.get("from_addr") or self.composer.settings.default_from),
            recipients=[recipient.email],
            raw=built.data,
            smtputf8=built.smtputf8,
            message_id=message_id,
            tags={"message_id": message_id, "category": item.get("category") or "transactional"},
        )
        try:
            async with sending_slot(self.limiter, category="transactional", email=recipient.email):
                result = await self.provider.send(outbound)
        except PermanentDeliveryError as exc:
            await self._fail(message_id, exc.reason)
            return DeliveryOutcome.FAILED
        except TemporaryDeliveryError as exc:
            if attempt >= max_attempts:
                await self._fail(message_id, f"gave up after {attempt} attempts: {exc.reason}")
                return DeliveryOutcome.FAILED
            await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.QUEUED,
                                    allowed_from={MessageStatus.SENDING}, detail=f"deferred: {exc.reason}",
                                    fields={"error": exc.reason})
            raise
        fields: dict[str, Any] = {"provider": result.provider, "sent_at": now_iso()}
        if result.provider_message_id:
            fields["provider_message_id"] = result.provider_message_id
        await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.SENT,
                                allowed_from={MessageStatus.SENDING}, fields=fields)
        if self.js is not None:
            await count_sent(self.js, 1)
        await self._count(item, sent=1)
        if self.simulator is not None and self.simulator.enabled:
            await asyncio.to_thread(self.simulator.after_send, recipient=recipient.email, source=outbound.mail_from,
                                    message_id=message_id, provider_message_id=result.provider_message_id,
                                    category=item.get("category") or "transactional")
        return DeliveryOutcome.SENT

    async def _fail(self, message_id: str, reason: str) -> None:
        logger.warning("message %s failed: %s", message_id, reason)
        item = await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.FAILED,
                                       allowed_from={MessageStatus.SENDING}, detail=reason, fields={"error": reason})
        await self._count(item, failed=1)

    async def _count(self, item: dict[str, Any], *, sent: int = 0, failed: int = 0) -> None:
        """Account-wide (and the attributed campaign's) send counters for reports, once per message."""
        if self.stats is not None:
            await asyncio.to_thread(record_sends, self.stats, f"msg:{item['id']}", sent=sent, failed=failed,
                                    campaign_id=item.get("campaign_id"))


def sending_slot(limiter: RateLimiter | None, *, category: str, email: str) -> AbstractAsyncContextManager[None]:
    """The rate limiter's slot for one send (waits for a token; reports throttling), or no limit."""
    if limiter is None:
        return nullcontext()
    return limiter.sending(category=category, domain=email.rpartition("@")[2])  # type: ignore[arg-type]


def _envelope_from(from_header: str) -> str:
    from jetmail.mime import parse_address

    return parse_address(from_header)[1]
