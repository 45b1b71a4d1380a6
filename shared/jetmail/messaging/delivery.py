"""The worker side of one message: claim, check, render, build, send, record.

Two DynamoDB requests per message sent. Claiming is one conditional write
(``queued|scheduled|sending → sending``, counting the attempt) that returns the message, so nothing
reads it first: a job redelivered after the message was sent, failed, cancelled or suppressed finds it
in a final state and does nothing, so a redelivered job never sends twice. The suppression check reads
the stop events the worker follows, in memory (``jetmail.deliverability.policy``), the template head comes from the
store's short cache, and the outcome (``sent`` or ``failed``) rides with the send counters in one
TransactWriteItems.

An SMTP server commits a message when it receives the final ``.`` of DATA, whether or not the
sender lives to read its ``250``. If a worker dies between that moment and the ``sent`` write (one
DynamoDB request), the message stays ``sending`` and its job is redelivered: jetmail then sends it
again, with the same ``Message-ID`` header. It favours delivery over silence; a worker that dies
anywhere earlier (rendering, the SMTP dialogue before the final ``.``) loses nothing and
duplicates nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from jetmail.deliverability.feedback import record_sends
from jetmail.deliverability.policy import SuppressionPolicy
from jetmail.messaging.compose import Recipient
from jetmail.messaging.messages import (
    MessageRepository,
    MessageStatus,
    attachments_ref,
    decode_attachments,
    inline_version,
    now_iso,
)
from jetmail.messaging.mime import MimeAttachment
from jetmail.messaging.pipeline import Draft, SendPipeline, Sent
from jetmail.messaging.providers import PermanentDeliveryError, TemporaryDeliveryError
from jetmail.messaging.templates import TemplateNotFound, TemplateStore
from jetmail.messaging.templating import TemplateRenderError
from jetmail.storage.table import ConditionFailed, Table
from jetmail.webhooks import DISABLED, WebhookSink, message_event

logger = logging.getLogger("jetmail.messaging.delivery")

T = TypeVar("T")

CLAIMABLE = {MessageStatus.QUEUED, MessageStatus.SCHEDULED, MessageStatus.SENDING}


class RawBodies(Protocol):
    """Where messages submitted over SMTP keep their MIME until sent (``jetmail.messaging.submission.RawStore``)."""

    async def get(self, ref: str) -> bytes | None: ...


class DeliveryOutcome:
    SKIPPED = "skipped"
    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"


class Deliverer:
    """The transactional wrapper around the send pipeline: the message record's claim and status."""

    def __init__(self, *, messages: MessageRepository, templates: TemplateStore, pipeline: SendPipeline,
                 policy: SuppressionPolicy, stats: Table | None = None, raw_store: RawBodies | None = None,
                 webhooks: WebhookSink = DISABLED) -> None:
        self.webhooks = webhooks  # ``message.sent`` and ``message.failed``, once the outcome is written
        self.stats = stats
        self.raw_store = raw_store
        self.messages = messages
        self.templates = templates
        self.pipeline = pipeline
        self.policy = policy

    async def _blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self.pipeline.blocking("transactional", fn, *args, **kwargs)

    async def deliver(self, message_id: str, *, attempt: int, max_attempts: int) -> str:
        """Send one transactional message; raises TemporaryDeliveryError when the job should retry."""
        try:
            # the claim returns the message, so nothing reads it first
            item = await self._blocking(self.messages.transition, message_id, MessageStatus.SENDING,
                                           allowed_from=CLAIMABLE, count_attempt=True, detail=f"attempt {attempt}")
        except ConditionFailed:
            # cancelled, suppressed at submit, already final (a redelivered job) or no longer stored
            logger.info("message %s is not to be sent (not queued, scheduled or sending)", message_id)
            return DeliveryOutcome.SKIPPED
        category = item.get("category") or "transactional"
        # checked again at send time, from the stop events this worker follows: the address may have
        # bounced or been suppressed since the message was accepted
        refused = await self.policy.at_send(item["to"], category=category, accepted_at=item.get("created_at"))
        if refused is not None:
            try:
                await self._blocking(self.messages.transition, message_id, MessageStatus.SUPPRESSED,
                                        allowed_from={MessageStatus.SENDING}, detail=refused)
            except ConditionFailed:
                pass
            return DeliveryOutcome.SKIPPED
        dropped: list[dict[str, str]] = []
        recipient = Recipient(email=item["to"], name=item.get("to_name"), language=item.get("language"),
                              timezone=item.get("timezone"))
        try:
            if item.get("kind") == "raw":
                draft = await self._raw_draft(item, recipient, category)
            else:
                draft = await self._draft(item, recipient, category)
                if draft.cc or draft.bcc:
                    draft, dropped = await self._without_suppressed(draft, item)
            sent = await self.pipeline.send(draft)
        except (TemplateNotFound, TemplateRenderError, ValueError) as exc:
            await self._fail(item, f"cannot render: {exc}")
            return DeliveryOutcome.FAILED
        except PermanentDeliveryError as exc:
            await self._fail(item, exc.reason)
            await self.pipeline.refused(exc, lane="transactional")  # after the failure: the record stays failed
            return DeliveryOutcome.FAILED
        except TemporaryDeliveryError as exc:
            if attempt >= max_attempts:
                await self._fail(item, f"gave up after {attempt} attempts: {exc.reason}")
                return DeliveryOutcome.FAILED
            await self._blocking(self.messages.transition, message_id, MessageStatus.QUEUED,
                                    allowed_from={MessageStatus.SENDING}, detail=f"deferred: {exc.reason}",
                                    fields={"error": exc.reason})
            raise
        stopped_since = len(dropped) > len(item.get("suppressed_recipients") or [])
        return await self._sent(item, sent, dropped=dropped if stopped_since else None)

    async def _draft(self, item: dict[str, Any], recipient: Recipient, category: str) -> Draft:
        """A stored template (its head from the store's cache) or the record's inline content, with the
        record's copies, headers and attachments (one object-store read, not DynamoDB)."""
        inline = item.get("inline")
        if inline:
            version = inline_version(subject=inline["subject"], html=inline.get("html"), text=inline.get("text"),
                                     locale=item.get("language"))
        else:
            version = await self._blocking(self.templates.resolve, item["template"], item.get("language"))
        attachments: tuple[MimeAttachment, ...] = ()
        if item.get("attachments"):
            blob = await self.raw_store.get(attachments_ref(item["id"])) if self.raw_store is not None else None
            if blob is None:
                raise PermanentDeliveryError("its attachments are no longer stored "
                                             "(JETMAIL_SUBMISSION_RETENTION_HOURS passed)")
            attachments = tuple(MimeAttachment(filename=a.filename, content_type=a.content_type, data=a.data(),
                                               content_id=a.content_id) for a in decode_attachments(blob))
        return Draft(message_id=item["id"], recipient=recipient, version=version,
                     context=json.loads(item.get("context") or "{}"), category=category,
                     from_addr=item.get("from_addr") or self.pipeline.composer.settings.default_from,
                     reply_to=item.get("reply_to"), cc=tuple(item.get("cc") or ()), bcc=tuple(item.get("bcc") or ()),
                     headers=dict(item.get("headers") or {}), attachments=attachments,
                     text_only=inline is not None and not inline.get("html"))

    async def _without_suppressed(self, draft: Draft, item: dict[str, Any]) -> tuple[Draft, list[dict[str, str]]]:
        """The draft without the cc and bcc addresses stopped since the message was accepted (the same
        in-memory check as its ``to``), and what was dropped, at submit and now."""
        dropped = list(item.get("suppressed_recipients") or [])
        kept: dict[str, list[str]] = {"cc": [], "bcc": []}
        for role in ("cc", "bcc"):
            for address in getattr(draft, role):
                reason = await self.policy.at_send(address, category=draft.category,
                                                   accepted_at=item.get("created_at"))
                if reason is None:
                    kept[role].append(address)
                else:
                    dropped.append({"address": address, "role": role, "reason": reason})
        return replace(draft, cc=tuple(kept["cc"]), bcc=tuple(kept["bcc"])), dropped

    async def _raw_draft(self, item: dict[str, Any], recipient: Recipient, category: str) -> Draft:
        """A message submitted over SMTP: its MIME from the raw store, sent without a render."""
        body = await self.raw_store.get(item["raw_ref"]) if self.raw_store is not None else None
        if body is None:
            raise PermanentDeliveryError("its submitted body is no longer stored "
                                         "(JETMAIL_SUBMISSION_RETENTION_HOURS passed)")
        return Draft(message_id=item["id"], recipient=recipient, version=None, context={}, category=category,
                     from_addr=item["from_addr"], raw=body)

    async def _sent(self, item: dict[str, Any], sent: Sent, *, dropped: list[dict[str, str]] | None = None) -> str:
        fields: dict[str, Any] = {"provider": sent.result.provider, "sent_at": now_iso()}
        if dropped:
            # rides with the outcome: copies stopped since submit, in the same write
            fields["suppressed_recipients"] = dropped
            fields["cc"] = list(sent.draft.cc)
            fields["bcc"] = list(sent.draft.bcc)
        if sent.result.provider_message_id:
            fields["provider_message_id"] = sent.result.provider_message_id
        await self._settle(item, MessageStatus.SENT, fields=fields, sent=1)
        await self._blocking(self.webhooks.emit, [message_event("message.sent", item, at=fields["sent_at"])])
        await self.pipeline.sent([sent])
        return DeliveryOutcome.SENT

    async def _fail(self, item: dict[str, Any], reason: str) -> None:
        logger.warning("message %s failed: %s", item["id"], reason)
        await self._settle(item, MessageStatus.FAILED, detail=reason, fields={"error": reason}, failed=1)
        await self._blocking(self.webhooks.emit, [message_event("message.failed", item, error=reason)])

    async def _settle(self, item: dict[str, Any], status: MessageStatus, *, fields: dict[str, Any],
                      detail: str | None = None, sent: int = 0, failed: int = 0) -> None:
        """The outcome (``sending`` → ``status``) and the account-wide (and attributed campaign's) send
        counters in one TransactWriteItems: written together or not at all, counted once per message."""
        message_id = item["id"]
        outcome = self.messages.transition_op(message_id, status, allowed_from={MessageStatus.SENDING},
                                              detail=detail, fields=fields)
        if self.stats is None:
            await self._blocking(self.messages.table.transact, [outcome])
            return
        key = f"msg:{message_id}"
        campaign_id = item.get("campaign_id")
        if await self._blocking(record_sends, self.stats, key, sent=sent, failed=failed, campaign_id=campaign_id,
                                   with_ops=[outcome]):
            return
        # rare: the message left ``sending`` meanwhile (a provider event about it came first) or was counted
        # before; the counters alone, still once (their mark)
        logger.info("message %s was no longer sending when its outcome (%s) was written", message_id, status.value)
        await self._blocking(record_sends, self.stats, key, sent=sent, failed=failed, campaign_id=campaign_id)
