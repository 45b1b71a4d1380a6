"""Learn from every event: message status, counters, suppression and engagement, exactly once.

Events arrive at least once and in any order. Each event is recorded with a conditional Put
(``EVT#<message>`` / ``<kind>#<event id>``, the ``EventLog``) in the same transaction that adds its
counters (``jetmail.reporting.counters``), so a repeated event changes nothing. Events and counters live in the
stats table, apart from the main table, so those transactions touch only small items. "First open"
and "first click" markers ride in the same transaction to count unique opens and clicks exactly once.
Status changes only move forward by rank (sent < delivered < bounced < complained), so a Delivery that
arrives after its Bounce is a no-op. Sends and send failures are added by ``record_sends`` (once per
campaign batch or message). Policy actions (suppression, cancelling pending mail) are idempotent by
nature.

Policy (settings): a permanent bounce suppresses the address (``hard_bounce``) and cancels every
pending message and sequence step to it, except a policy refusal (subtype ``Policy``, a 5.7.x reply to mail
sent over SMTP), which counts as a bounce for reputation but suppresses nobody; transient and undetermined
bounces are counted, and
``soft_bounce_limit`` of them within ``soft_bounce_window_days`` suppress it; a complaint
suppresses it (``spam_complaint``); ``OnAccountSuppressionList`` suppresses it. An unsubscribe (from
all mail or from one list) cancels the recipient's pending marketing sequence steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from jetmail.campaigns.ids import parse_campaign_message_id
from jetmail.deliverability.events import DeliveryEvent, EventKind
from jetmail.deliverability.machines import is_machine, link_burst
from jetmail.deliverability.suppressions import SuppressionStore
from jetmail.messaging.messages import MessageRepository, MessageStatus
from jetmail.reporting.counters import Counters
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table, item_fields
from jetmail.webhooks import DISABLED, WebhookSink, feedback_event

logger = logging.getLogger("jetmail.deliverability.feedback")

RANK = {MessageStatus.SENDING: 0, MessageStatus.SENT: 1, MessageStatus.DELIVERED: 2, MessageStatus.BOUNCED: 3,
        MessageStatus.COMPLAINED: 4}
MARKETING = frozenset({"marketing"})
STATUS_FOR = {EventKind.DELIVERY: MessageStatus.DELIVERED, EventKind.BOUNCE: MessageStatus.BOUNCED,
              EventKind.COMPLAINT: MessageStatus.COMPLAINED}


@dataclass(frozen=True, slots=True)
class Policy:
    soft_bounce_limit: int = 5
    soft_bounce_window_days: int = 30
    event_retention_days: int = 400


@dataclass(slots=True)
class Attribution:
    message_id: str | None
    recipient: str
    category: str = "transactional"
    campaign_id: str | None = None
    variant: str | None = None
    sent_at: str | None = None
    transactional_record: bool = False


def counter_names(event: DeliveryEvent) -> list[str]:
    """The always-counted counters of an event (unique ones are added by the markers)."""
    kind = event.kind
    if kind == EventKind.BOUNCE:
        return ["bounced_hard" if event.bounce_type == "Permanent" else "bounced_soft"]
    if kind in (EventKind.OPEN, EventKind.CLICK):
        base = kind.value
        return [f"{base}_total", f"{base}_{'machine' if event.machine else 'human'}_total"]
    return {EventKind.DELIVERY: ["delivered"], EventKind.COMPLAINT: ["complained"],
            EventKind.UNSUBSCRIBE: ["unsubscribed"], EventKind.REJECT: ["rejected"],
            EventKind.DELIVERY_DELAY: ["delayed"], EventKind.RENDERING_FAILURE: ["rendering_failed"],
            EventKind.SEND: ["provider_accepted"]}.get(kind, [])


def record_sends(stats: Table, key: str, *, sent: int, failed: int = 0, campaign_id: str | None = None,
                 variant: str | None = None, at: datetime | None = None,
                 with_ops: Sequence[dict[str, Any]] = ()) -> bool:
    """Add the sends and failures of one campaign batch or one message to the counters, once per ``key``
    (``Counters.record_sends``, one TransactWriteItems); False when it was counted before."""
    return Counters(stats).record_sends(key, sent=sent, failed=failed, campaign_id=campaign_id, variant=variant,
                                        at=at, with_ops=with_ops)


class EventLog:
    """Events in the stats table, one row each, found per message and per recipient (gsi1 ``RCPT#``)."""

    def __init__(self, stats: Table, *, retention_days: int = 400) -> None:
        self.stats = stats
        self.retention_days = retention_days

    def subject(self, who: Attribution) -> str:
        """Where the event is filed: under its message, or under the address for an event without one."""
        return who.message_id or keys.recipient_subject(who.recipient)

    def expiry(self) -> int:
        """When an event recorded now expires (``expires_at``: its retention from now)."""
        return int(time.time() + self.retention_days * 86400)

    def record_op(self, event: DeliveryEvent, who: Attribution, *, expires: int) -> dict[str, Any]:
        """The event's row, written once, as an operation of the transaction that counts it."""
        row = keys.event(self.subject(who), event.kind.value, event.event_id).item(
            gsi1pk=keys.recipient(who.recipient),
            gsi1sk=keys.by_recipient(keys.EVENT_PREFIX, event.occurred_at.isoformat()),
            kind=event.kind.value, recipient=who.recipient, message_id=who.message_id,
            campaign_id=who.campaign_id, variant=who.variant,
            occurred_at=event.occurred_at.isoformat(), bounce_type=event.bounce_type,
            bounce_subtype=event.bounce_subtype, diagnostic=event.diagnostic,
            complaint_type=event.complaint_type, link_url=event.link_url,
            link_index=event.link_index, user_agent=event.user_agent, country=event.country,
            machine=event.machine, source=event.source, expires_at=expires)
        return self.stats.put_op(row, condition="attribute_not_exists(pk)")

    def first_op(self, subject: str, marker: str, *, expires: int) -> dict[str, Any]:
        """The mark of a message's first event of a kind (``open``, ``click_human``...), written once, as an
        operation of the same transaction: it fails there when the message had one before."""
        return self.stats.put_op(keys.first_marker(subject, marker).item(expires_at=expires),
                                 condition="attribute_not_exists(pk)")

    def of_recipient(self, address: str) -> list[dict[str, Any]]:
        """The events of ``address`` (lower-cased) as held, without keys and expiry: one Query of gsi1 per
        ~1 MB page."""
        return [item_fields(item) for item in self._of_recipient(address)]

    def delete_of_recipient(self, address: str) -> int:
        """Delete every event of ``address`` (lower-cased), those filed under the address itself included;
        returns how many. One Query of gsi1 and one of the address's own partition per ~1 MB page, and one
        BatchWriteItem per 25 events."""
        rows = [(i["pk"], i["sk"]) for i in self._of_recipient(address)]
        # events not tied to a message are filed under the address itself
        unattributed = keys.events_partition(keys.recipient_subject(address))
        rows += [(i["pk"], i["sk"]) for i in self.stats.query_all(pk=unattributed)]
        rows = list(dict.fromkeys(rows))
        self.stats.batch_delete(rows)
        return len(rows)

    def _of_recipient(self, address: str) -> Iterator[dict[str, Any]]:
        return self.stats.query_all(pk=keys.recipient(address), sk_prefix=keys.EVENT_PREFIX, index="gsi1")


class SoftBounces:
    """The log of an address's transient bounces (``SOFT#<address>``), one row per address in the main table."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def add(self, address: str, at: datetime) -> list[str]:
        """Log a bounce at ``at``; returns every logged bounce (ISO 8601 times). One UpdateItem."""
        item = self.table.update(*keys.soft_bounces(address),
                                 expression="SET bounces = list_append(if_not_exists(bounces, :empty), :b)",
                                 params={":empty": [], ":b": [at.isoformat()]})
        return list(item.get("bounces", []))

    def of(self, address: str) -> list[str]:
        """The logged bounces of ``address`` (lower-cased), oldest first: one GetItem."""
        return list((self.table.get(*keys.soft_bounces(address)) or {}).get("bounces") or [])

    def forget(self, address: str) -> None:
        """One DeleteItem."""
        self.table.delete(*keys.soft_bounces(address))


class FeedbackProcessor:
    def __init__(self, *, table: Table, stats: Table, messages: MessageRepository, suppressions: SuppressionStore,
                 sequences: Any, contacts: Any, queue: Any, policy: Policy | None = None,
                 webhooks: WebhookSink = DISABLED) -> None:
        self.webhooks = webhooks
        self.table = table
        self.stats = stats
        self.messages = messages
        self.suppressions = suppressions
        self.sequences = sequences
        self.contacts = contacts
        self.queue = queue
        self.policy = policy or Policy()
        self.events = EventLog(stats, retention_days=self.policy.event_retention_days)
        self.counters = Counters(stats)
        self.soft_bounces = SoftBounces(table)

    # ---- attribution
    def attribute(self, event: DeliveryEvent) -> Attribution:
        recipient = (event.recipient or "").lower()
        if event.message_id:
            parsed = parse_campaign_message_id(event.message_id)
            if parsed is not None:
                campaign_id, run, batch, pos = parsed
                item = self.table.get(*keys.batch(campaign_id, run, batch))
                if item is not None:
                    addresses = item.get("recipients") or []
                    if not recipient and 0 <= pos < len(addresses):
                        recipient = addresses[pos].lower()
                    return Attribution(message_id=event.message_id, recipient=recipient, category="marketing",
                                       campaign_id=campaign_id, variant=item.get("variant") or event.variant)
                return Attribution(message_id=event.message_id, recipient=recipient, category="marketing",
                                   campaign_id=campaign_id, variant=event.variant)
            record = self.messages.find(event.message_id)
            if record is not None:
                return Attribution(message_id=event.message_id, recipient=recipient or record["to"].lower(),
                                   category=record.get("category") or "transactional",
                                   campaign_id=record.get("campaign_id"), sent_at=record.get("sent_at"),
                                   transactional_record=True)
        return Attribution(message_id=event.message_id, recipient=recipient, campaign_id=event.campaign_id,
                           variant=event.variant)

    # ---- processing
    def process(self, event: DeliveryEvent) -> str:
        who = self.attribute(event)
        if not who.recipient:
            logger.warning("event %s %s names no recipient and no known message; ignored", event.kind, event.event_id)
            return "unattributed"
        if event.source == "ses" and event.kind in (EventKind.OPEN, EventKind.CLICK):
            if who.category == "marketing":
                # one tracker per message: jetmail's own pixel and links report marketing mail; SES's
                # (if its open/click tracking was switched on) would count the same reader twice
                return "ignored"
            event = event.model_copy(update={"machine": self._machine(event, who)})
        recorded = self._record(event, who)
        # a repeat too (its id is stable): the first processing may have stopped before emitting
        self.webhooks.emit([feedback_event(event, message_id=who.message_id, recipient=who.recipient,
                                           category=who.category, campaign_id=who.campaign_id)])
        if not recorded:
            return "duplicate"
        self._apply_status(event, who)
        self._apply_policy(event, who)
        return "applied"

    def _machine(self, event: DeliveryEvent, who: Attribution) -> bool:
        """An open or click reported by SES, judged by the rules jetmail's own tracking uses."""
        sent = event.sent_at or (datetime.fromisoformat(who.sent_at) if who.sent_at else None)
        kind: Literal["open", "click"] = "open" if event.kind == EventKind.OPEN else "click"
        if is_machine(kind, user_agent=event.user_agent, ip=event.ip,
                      since_send=event.occurred_at - sent if sent else None):
            return True
        return kind == "click" and who.message_id is not None and \
            link_burst(self.stats, who.message_id, link=event.link_url, now=event.occurred_at)

    def _record(self, event: DeliveryEvent, who: Attribution) -> bool:
        """The event row and its counters in one transaction (in the stats table); False when the event
        was seen before."""
        subject = self.events.subject(who)
        expires = self.events.expiry()
        counters = counter_names(event)
        markers: list[str] = []  # first-event markers: ``open``, ``open_human``, ``click``, ``click_human``
        if event.kind in (EventKind.OPEN, EventKind.CLICK) and who.message_id:
            markers = [event.kind.value] + ([] if event.machine else [f"{event.kind.value}_human"])
        while True:
            names = counters + [f"{u.replace('_human', '')}_{'human_' if u.endswith('_human') else ''}unique"
                                for u in markers]
            ops = [self.events.record_op(event, who, expires=expires)]
            ops += [self.events.first_op(subject, marker, expires=expires) for marker in markers]
            ops += self.counters.event_ops(event, names, campaign_id=who.campaign_id, variant=who.variant)
            try:
                self.stats.transact(ops)
                return True
            except ConditionFailed as exc:
                if 0 in exc.failed or not exc.failed:
                    return False
                # not the first open/click of this message: count it without the unique counter(s)
                markers = [m for i, m in enumerate(markers, start=1) if i not in exc.failed]

    def _apply_status(self, event: DeliveryEvent, who: Attribution) -> None:
        target = STATUS_FOR.get(event.kind)
        if target is None or not who.transactional_record or who.message_id is None:
            return
        lower = {s for s, r in RANK.items() if r < RANK[target]}
        detail = event.diagnostic or event.bounce_subtype or event.complaint_type
        try:
            self.messages.transition(who.message_id, target, allowed_from=lower, detail=detail)
        except ConditionFailed:
            pass  # already at or past this status: events are unordered

    def _apply_policy(self, event: DeliveryEvent, who: Attribution) -> None:
        email = who.recipient
        if event.kind == EventKind.BOUNCE:
            if event.bounce_subtype == "OnAccountSuppressionList":
                self._suppress(email, "account_suppression_list", event)
            elif event.bounce_type == "Permanent" and event.bounce_subtype == "Policy":
                # the mail, IP or domain was refused (5.7.x), not the address: counted, not suppressed
                logger.info("policy bounce for %s (%s): counted, not suppressed", email, event.diagnostic)
            elif event.bounce_type == "Permanent":
                self._suppress(email, "hard_bounce", event)
            else:
                self._count_soft_bounce(email, event)
        elif event.kind == EventKind.COMPLAINT:
            self._suppress(email, "spam_complaint", event)
        elif event.kind == EventKind.UNSUBSCRIBE:
            if event.list_id and self.contacts is not None:
                from jetmail.audience.model import ContactUpsert

                try:
                    self.contacts.upsert(email, ContactUpsert(lists={event.list_id: "unsubscribed"}))
                except (LookupError, ValueError):
                    # the list is gone: honour the wish more broadly rather than not at all
                    self.suppressions.add(email, reason="unsubscribed", source=event.source)
            else:
                self.suppressions.add(email, reason="unsubscribed", source=event.source)
            if self.sequences is not None:
                # whatever the scope: the series must not keep mailing someone who asked to stop; its
                # transactional steps (a receipt, a shipping notice) still go
                self.sequences.cancel_for_recipient(email, reason="unsubscribed", categories=MARKETING)
        elif event.kind in (EventKind.OPEN, EventKind.CLICK) and not event.machine and self.contacts is not None:
            self.contacts.record_engagement(email, event.kind.value, event.occurred_at)

    def _suppress(self, email: str, reason: str, event: DeliveryEvent) -> None:
        self.suppressions.add(email, reason=reason, source=event.source)  # type: ignore[arg-type]
        cancelled = self.cancel_pending(email, reason=reason)
        logger.info("suppressed %s (%s); cancelled %d pending message(s)", email, reason, cancelled)

    def cancel_pending(self, email: str, *, reason: str) -> int:
        """Cancel every queued or scheduled message to ``email`` (sequence steps included)."""
        cancelled = 0
        for item in self.messages.for_recipient(email):
            if item.get("status") in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
                try:
                    self.messages.transition(item["id"], MessageStatus.CANCELLED,
                                             allowed_from={MessageStatus.QUEUED, MessageStatus.SCHEDULED},
                                             detail=f"suppressed: {reason}")
                except ConditionFailed:
                    continue
                self.queue.cancel(item["id"])
                cancelled += 1
        if self.sequences is not None:
            self.sequences.cancel_for_recipient(email, reason=f"suppressed: {reason}")
        return cancelled

    def _count_soft_bounce(self, email: str, event: DeliveryEvent) -> None:
        window = timedelta(days=self.policy.soft_bounce_window_days)
        at = event.occurred_at.astimezone(UTC)
        recent = [b for b in self.soft_bounces.add(email, at) if datetime.fromisoformat(b) > at - window]
        if len(recent) >= self.policy.soft_bounce_limit:
            self._suppress(email, "soft_bounce_limit", event)
