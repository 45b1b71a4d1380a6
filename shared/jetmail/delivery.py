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
from typing import Any, Protocol

from jetmail.compose import Recipient
from jetmail.feedback import record_sends
from jetmail.messages import FINAL_BEFORE_SEND, MessageRepository, MessageStatus, now_iso
from jetmail.pipeline import Draft, SendPipeline, Sent
from jetmail.policy import SuppressionPolicy
from jetmail.providers import PermanentDeliveryError, TemporaryDeliveryError
from jetmail.storage.table import ConditionFailed, Table
from jetmail.template_store import TemplateNotFound, TemplateStore
from jetmail.templating import TemplateRenderError

logger = logging.getLogger("jetmail.delivery")

CLAIMABLE = {MessageStatus.QUEUED, MessageStatus.SCHEDULED, MessageStatus.SENDING}


class RawBodies(Protocol):
    """Where messages submitted over SMTP keep their MIME until sent (``jetmail.submission.RawStore``)."""

    async def get(self, ref: str) -> bytes | None: ...


class DeliveryOutcome:
    SKIPPED = "skipped"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"


class Deliverer:
    """The transactional wrapper around the send pipeline: the message record's claim and status."""

    def __init__(self, *, messages: MessageRepository, templates: TemplateStore, pipeline: SendPipeline,
                 policy: SuppressionPolicy, stats: Table | None = None, raw_store: RawBodies | None = None) -> None:
        self.stats = stats
        self.raw_store = raw_store
        self.messages = messages
        self.templates = templates
        self.pipeline = pipeline
        self.policy = policy

    async def deliver(self, message_id: str, *, attempt: int, max_attempts: int) -> str:
        """Send one transactional message; raises TemporaryDeliveryError when the job should retry."""
        item = await asyncio.to_thread(self.messages.get, message_id)
        if MessageStatus(item["status"]) in FINAL_BEFORE_SEND:
            return DeliveryOutcome.SKIPPED
        category = item.get("category") or "transactional"
        # checked at send time, not only at submit: the address may have bounced since
        refused = await self.policy.at_send(item["to"], category=category)
        if refused is not None:
            try:
                await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.SUPPRESSED,
                                        allowed_from=CLAIMABLE, detail=refused)
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
            if item.get("kind") == "raw":
                draft = await self._raw_draft(item, recipient, category)
            else:
                version = await asyncio.to_thread(self.templates.resolve, item["template"], item.get("language"))
                draft = Draft(message_id=message_id, recipient=recipient, version=version,
                              context=json.loads(item.get("context") or "{}"), category=category,
                              from_addr=item.get("from_addr") or self.pipeline.composer.settings.default_from,
                              reply_to=item.get("reply_to"))
            sent = await self.pipeline.send(draft)
        except (TemplateNotFound, TemplateRenderError, ValueError) as exc:
            await self._fail(message_id, f"cannot render: {exc}")
            return DeliveryOutcome.FAILED
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
        return await self._sent(item, sent)

    async def _raw_draft(self, item: dict[str, Any], recipient: Recipient, category: str) -> Draft:
        """A message submitted over SMTP: its MIME from the raw store, sent without a render."""
        body = await self.raw_store.get(item["raw_ref"]) if self.raw_store is not None else None
        if body is None:
            raise PermanentDeliveryError("its submitted body is no longer stored "
                                         "(JETMAIL_SUBMISSION_RETENTION_HOURS passed)")
        return Draft(message_id=item["id"], recipient=recipient, version=None, context={}, category=category,
                     from_addr=item["from_addr"], raw=body)

    async def _sent(self, item: dict[str, Any], sent: Sent) -> str:
        message_id = item["id"]
        fields: dict[str, Any] = {"provider": sent.result.provider, "sent_at": now_iso()}
        if sent.result.provider_message_id:
            fields["provider_message_id"] = sent.result.provider_message_id
        await asyncio.to_thread(self.messages.transition, message_id, MessageStatus.SENT,
                                allowed_from={MessageStatus.SENDING}, fields=fields)
        await self._count(item, sent=1)
        await self.pipeline.sent([sent])
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
