"""The message log: find what was sent, and follow one message from queued to clicked.

Every search reads one index, never the whole table. Which one depends on the filters given:

- ``to`` (with tag, status, since, until): the recipient's gsi1 partition ``RCPT#<email>`` between the two
  times, tag and status filtered on the message itself. 1 Query per ``limit`` messages read.
- ``tag`` (with status, since, until): the tag's index rows ``MSGTAG#<tag>``, status filtered on the
  messages read. 1 Query and 1 BatchGetItem per ``limit`` rows read.
- status and/or since/until alone: the day partitions ``MSGDAY#<date>``, day by day from ``until`` (now)
  back to ``since`` (``DEFAULT_WINDOW_DAYS`` before ``until``). As for a tag, plus 1 Query per empty day.
- ``campaign_id`` (with to, status): the campaign's batch items, in batch order, to and status filtered
  per recipient. 1 Query per ``CAMPAIGN_BATCHES_PER_QUERY`` batches, and 1 journal read (NATS) per batch.

Newest first, but a campaign's in batch order; a page makes at most ``MAX_QUERIES`` Queries.
A filter narrows what a page keeps, not what it reads: a page may hold fewer than ``limit`` messages (none,
even) and still have a ``next_cursor``; follow it until it is null. The cursor carries the search it
belongs to, so it cannot be replayed with other filters.

Status is read from the message itself (the worker changes it there and nowhere else), so a message found
through an index row shows its status as it is now. Campaign messages (``cm_...``) have no message item:
their view is built from the campaign's batch item (the recipient, and failures), the batch journal (sent,
failed or skipped) and the events filed under their id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from jetmail.audience.addresses import InvalidAddress
from jetmail.campaigns.ids import campaign_message_id, parse_campaign_message_id
from jetmail.messaging.messages import MessageNotFound, MessagePublic, MessageRepository, MessageStatus, public
from jetmail.storage import keys
from jetmail.storage.cursors import InvalidCursor, pack, unpack
from jetmail.storage.table import Table, key_values

if TYPE_CHECKING:
    from jetmail.services import Services
    from jetmail.webhooks.deliveries import DeliveryLog

MAX_QUERIES = 10
DEFAULT_WINDOW_DAYS = 30
CAMPAIGN_BATCHES_PER_QUERY = 10
# what an event of the stats table is called in a timeline
EVENT_NAMES = {"send": "sent", "delivery": "delivered", "bounce": "bounced", "complaint": "complained",
               "open": "opened", "click": "clicked", "reject": "rejected", "delivery_delay": "delivery_delayed",
               "rendering_failure": "failed", "unsubscribe": "unsubscribed", "subscription": "subscription"}


class InvalidSearch(InvalidAddress):
    """Filters that cannot go together (answered 422, like an invalid address)."""


@dataclass(frozen=True, slots=True)
class LogFilter:
    to: str | None = None
    status: MessageStatus | None = None
    tag: str | None = None
    campaign_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def signature(self) -> str:
        """A short digest of the filters: a cursor is only good for the search that made it."""
        parts = [self.to and self.to.lower(), self.status, self.tag, self.campaign_id, _iso(self.since),
                 _iso(self.until)]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


class MessageSummary(BaseModel):
    """One message of a search: what a list shows; ``GET /v1/messages/{id}`` has the rest."""

    id: str
    to: str
    status: MessageStatus
    created_at: str | None = None
    category: str | None = None
    template: str | None = None
    subject: str | None = None
    campaign_id: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, str] | None = None


class TimelineEntry(BaseModel):
    """One step of a message's life: a status it went through, or an event about it."""

    at: str | None = Field(description="when (RFC 3339); null for a campaign outcome the journal keeps no time of")
    event: str = Field(description="queued, scheduled, sending, sent, delivered, delivery_delayed, bounced, "
                                   "complained, opened, clicked, failed, skipped, unsubscribed, webhook...")
    detail: str | None = None
    link: str | None = Field(default=None, description="clicked: the link followed")
    machine: bool | None = Field(default=None, description="opened/clicked: a scanner, not a person")
    source: str | None = Field(default=None, description="events: what reported it (ses, tracking, dsn...)")


class MessageDetail(MessagePublic):
    """A message with its timeline, in time order."""

    timeline: list[TimelineEntry] = Field(default_factory=list)


class CampaignBatches(Protocol):
    """The campaign store's batch items (``jetmail.campaigns.store.CampaignStore``)."""

    def get(self, campaign_id: str, *, consistent: bool = ...) -> dict[str, Any]: ...

    def batch(self, campaign_id: str, *, run: str, batch: int) -> dict[str, Any] | None: ...


JournalRead = Callable[[str, str, int], dict[int, dict[str, Any]]]


class DeliveriesOf(Protocol):
    """Webhook deliveries of one message, as timeline entries (``event: webhook``)."""

    def of_message(self, message_id: str) -> list[TimelineEntry]: ...


class MessageLog:
    """Searches and timelines over the message records, their index rows, campaign batches and events."""

    def __init__(self, *, messages: MessageRepository, stats: Table, campaigns: CampaignBatches | None = None,
                 journal: JournalRead | None = None, deliveries: DeliveriesOf | None = None) -> None:
        self.messages = messages
        self.table = messages.table
        self.stats = stats
        self.campaigns = campaigns
        # batch outcomes (sent/failed/skipped) per position; None: only failures are known
        self.journal = journal
        self.deliveries = deliveries

    # ---- search
    def search(self, query: LogFilter, *, limit: int = 50,
               cursor: str | None = None) -> tuple[list[MessageSummary], str | None]:
        """One page of messages matching ``query``, newest first (a campaign's in batch order), and the
        cursor of the next (None on the last). Costs per the module's table; raises InvalidCursor and
        InvalidSearch."""
        state = self._cursor(query, cursor)
        if query.campaign_id is not None:
            if query.tag is not None or query.since is not None or query.until is not None:
                raise InvalidSearch("campaign_id goes with to and status only (campaign messages have no tags "
                                    "and are listed in batch order)")
            return self._campaign_page(query, limit=limit, state=state)
        since, until = _iso(query.since), _iso(query.until)
        if since is not None and until is not None and since > until:
            raise InvalidSearch("since is after until")
        found: list[dict[str, Any]] = []
        start: dict[str, Any] | None = state.get("k")
        first, last = self._days(query)
        day: str = state.get("d") or last
        done = False
        queries = 0
        while len(found) < limit and queries < MAX_QUERIES:
            want = limit - len(found)
            queries += 1
            if query.to is not None:
                names, params, expression = _message_filter(query)
                items, start = self.messages.page_of_recipient(query.to, since=since, until=until,
                                                               filter=expression, names=names, params=params,
                                                               limit=want, start=start)
                found += items
                if not start:
                    done = True
                    break
                continue
            partition = (keys.message_tag_partition(query.tag) if query.tag is not None
                         else keys.message_day_partition(day))
            items, start = self.messages.page_of_index(partition, since=since, until=until, limit=want,
                                                       start=start)
            found += [i for i in items if query.status is None or i.get("status") == query.status.value]
            if not start:
                if query.tag is not None:
                    done = True
                    break
                day = (datetime.fromisoformat(day) - timedelta(days=1)).date().isoformat()
                if day < first:
                    done = True
                    break
        next_cursor = None if done else pack({"q": query.signature(), "k": start, "d": day})
        return [_summary(i) for i in found], next_cursor

    def _days(self, query: LogFilter) -> tuple[str, str]:
        until = (query.until or datetime.now(UTC)).astimezone(UTC)
        since = (query.since or until - timedelta(days=DEFAULT_WINDOW_DAYS)).astimezone(UTC)
        return since.date().isoformat(), until.date().isoformat()

    def _cursor(self, query: LogFilter, cursor: str | None) -> dict[str, Any]:
        if not cursor:
            return {}
        value = unpack(cursor)
        if not isinstance(value, dict) or value.get("q") != query.signature():
            raise InvalidCursor("cursor is not one this search returned (the filters must stay the same)")
        if query.campaign_id is not None:
            if not (isinstance(value.get("b"), str) and keys.BATCH_SK.fullmatch(value["b"])
                    and isinstance(value.get("p"), int)):
                raise InvalidCursor("cursor is not one this search returned")
            return value
        day, start = str(value.get("d")), value.get("k")
        try:
            datetime.strptime(day, "%Y-%m-%d")
        except (TypeError, ValueError):
            raise InvalidCursor("cursor is not one this search returned") from None
        if start is not None:
            # the start key must lie in the partition this search reads, or DynamoDB refuses the Query
            expected = (("gsi1pk", keys.recipient(query.to.lower())) if query.to is not None
                        else ("pk", keys.message_tag_partition(query.tag)) if query.tag is not None
                        else ("pk", keys.message_day_partition(day)))
            try:
                held = key_values(start)
            except Exception:
                raise InvalidCursor("cursor is not one this search returned") from None
            if (held.get(expected[0]) != expected[1] or not set(held) <= {"pk", "sk", "gsi1pk", "gsi1sk"}
                    or not all(isinstance(v, str) for v in held.values())):
                raise InvalidCursor("cursor is not one this search returned")
        return value

    def _campaign_page(self, query: LogFilter, *, limit: int,
                       state: dict[str, Any]) -> tuple[list[MessageSummary], str | None]:
        """The campaign's recipients, batch by batch: one Query per ``CAMPAIGN_BATCHES_PER_QUERY`` batch
        items and one journal read per batch, at most ``MAX_QUERIES`` Queries a page."""
        assert query.campaign_id is not None
        campaign_id = query.campaign_id
        pk = keys.campaign_partition(campaign_id)
        created = self._campaign_created(campaign_id)
        found: list[MessageSummary] = []
        after_sk: str | None = state.get("b")
        after_pos: int = state.get("p", -1)
        pending: list[dict[str, Any]] = []
        if after_sk is not None and after_pos >= 0:
            # the batch the previous page stopped in: carry on after its last position returned
            item = self.table.get(pk, after_sk)
            pending = [item] if item else []
        last_sk = after_sk or keys.BATCH_PREFIX
        exhausted = False
        queries = 0
        while True:
            for item in pending:
                run, number = keys.batch_of(item["sk"])
                outcomes = self._outcomes(campaign_id, run, number, item)
                for pos, address in enumerate(item.get("recipients") or []):
                    if item["sk"] == after_sk and pos <= after_pos:
                        continue
                    status = outcomes.get(pos, MessageStatus.QUEUED)
                    if (query.to is None or address.lower() == query.to.lower()) and (
                            query.status is None or status == query.status):
                        found.append(MessageSummary(id=campaign_message_id(campaign_id, run, number, pos),
                                                    to=address, status=status, created_at=created,
                                                    category="marketing", campaign_id=campaign_id))
                        if len(found) == limit:
                            return found, pack({"q": query.signature(), "b": item["sk"], "p": pos})
                last_sk = item["sk"]
            if exhausted:
                return found, None
            if queries == MAX_QUERIES:
                return found, pack({"q": query.signature(), "b": last_sk, "p": -1})
            items, more = self.table.query(pk=pk, sk_after=last_sk, limit=CAMPAIGN_BATCHES_PER_QUERY)
            queries += 1
            pending = [i for i in items if keys.BATCH_SK.fullmatch(i["sk"])]
            exhausted = not more or len(pending) < len(items)

    def _campaign_created(self, campaign_id: str) -> str | None:
        if self.campaigns is None:
            raise InvalidSearch("campaign messages are not available here")
        try:
            item = self.campaigns.get(campaign_id, consistent=False)
        except LookupError:
            raise MessageNotFound(f"campaign {campaign_id}") from None
        started: str | None = item.get("started_at") or item.get("created_at")
        return started

    def _outcomes(self, campaign_id: str, run: str, batch: int, item: dict[str, Any]) -> dict[int, MessageStatus]:
        """Position -> sent/failed/skipped: the journal's entries, the batch item's failures over them."""
        outcomes: dict[int, MessageStatus] = {}
        if self.journal is not None:
            for pos, entry in self.journal(campaign_id, run, batch).items():
                outcomes[pos] = MessageStatus(entry.get("s", "queued"))
        for pos in item.get("failures") or {}:
            outcomes[int(pos)] = MessageStatus.FAILED
        return outcomes

    # ---- one message
    def detail(self, message_id: str) -> MessageDetail:
        """A message with its timeline: its item (one GetItem) or, for a campaign message, its campaign
        (GetItem), batch item (GetItem) and journal (one NATS read); then one Query of its events in the
        stats table, and the webhook deliveries when a delivery log is plugged in. Raises MessageNotFound."""
        parsed = parse_campaign_message_id(message_id)
        if parsed is not None:
            view, timeline = self._campaign_message(message_id, *parsed)
        else:
            item = self.messages.get(message_id)
            view = public(item).model_dump()
            timeline = [TimelineEntry(at=h.at, event=h.status.value, detail=h.detail) for h in public(item).history]
        timeline += self._events(message_id)
        if self.deliveries is not None:
            timeline += self.deliveries.of_message(message_id)
        # a campaign outcome the journal keeps no time of stays after the campaign's start (a stable sort)
        started = str(view.get("created_at") or "")
        timeline.sort(key=lambda e: e.at or started)
        return MessageDetail.model_validate({**view, "timeline": timeline})

    def _campaign_message(self, message_id: str, campaign_id: str, run: str, batch: int,
                          pos: int) -> tuple[dict[str, Any], list[TimelineEntry]]:
        if self.campaigns is None:
            raise MessageNotFound(message_id)
        created = self._campaign_created(campaign_id)
        item = self.campaigns.batch(campaign_id, run=run, batch=batch)
        recipients = (item or {}).get("recipients") or []
        if item is None or pos >= len(recipients):
            raise MessageNotFound(message_id)
        failure = ((item.get("failures") or {}).get(str(pos))) or None
        entry = self.journal(campaign_id, run, batch).get(pos) if self.journal is not None else None
        status = (MessageStatus.FAILED if failure else MessageStatus(entry["s"]) if entry
                  else MessageStatus.QUEUED)
        reason = (failure or {}).get("reason") or (entry or {}).get("r")
        timeline = [TimelineEntry(at=created, event=MessageStatus.QUEUED.value, detail=f"campaign {campaign_id}")]
        if status != MessageStatus.QUEUED:
            timeline.append(TimelineEntry(at=(failure or {}).get("at"), event=status.value, detail=reason))
        view = {"id": message_id, "status": status, "to": recipients[pos], "category": "marketing",
                "created_at": created or "", "campaign_id": campaign_id, "error": reason,
                "provider_message_id": (entry or {}).get("m"),
                "history": [{"status": t.event, "at": t.at or created or "", "detail": t.detail} for t in timeline]}
        return view, timeline

    def _events(self, message_id: str) -> list[TimelineEntry]:
        """The message's events in the stats table (``jetmail.deliverability.feedback.EventLog`` rows): one
        Query of its partition per ~1 MB, the first-event markers left out."""
        entries = []
        for row in self.stats.query_all(pk=keys.events_partition(message_id)):
            kind = row.get("kind")
            if not kind or row["sk"].startswith(keys.FIRST_PREFIX):
                continue
            detail = " ".join(str(v) for v in (row.get("bounce_type"), row.get("bounce_subtype"),
                                                row.get("diagnostic"), row.get("complaint_type")) if v) or None
            entries.append(TimelineEntry(at=row.get("occurred_at"), event=EVENT_NAMES.get(kind, kind), detail=detail,
                                         link=row.get("link_url"), machine=row.get("machine"),
                                         source=row.get("source")))
        return entries


def open_log(svc: Services) -> MessageLog:
    """The message log over a process's clients (API, CLI, dashboard); a campaign batch's journal is read on
    the queue client's loop."""
    from jetmail.campaigns.signals import Journal

    def journal(campaign_id: str, run: str, batch: int) -> dict[int, dict[str, Any]]:
        return svc.queue.run(lambda q: Journal(q.js).read(campaign_id, run, batch))

    return MessageLog(messages=svc.messages.messages, stats=svc.stats_table, campaigns=svc.campaign_store,
                      journal=journal, deliveries=WebhookDeliveries(svc.webhook_log))


class WebhookDeliveries:
    """A message's webhook deliveries from the delivery log, one timeline entry per attempt."""

    def __init__(self, log: DeliveryLog) -> None:
        self.log = log

    def of_message(self, message_id: str) -> list[TimelineEntry]:
        """One Query (gsi1 of the delivery log)."""
        return [TimelineEntry(at=a.at, event="webhook", source=a.endpoint_id,
                              detail=f"{a.event_type} attempt {a.attempt}: {a.outcome}"
                                     + (f" ({a.status_code})" if a.status_code is not None else "")
                                     + (f", {a.error}" if a.error else ""))
                for a in self.log.of_message(message_id)]


def _message_filter(query: LogFilter) -> tuple[dict[str, str], dict[str, Any], str | None]:
    """The FilterExpression of status and tag on a message item."""
    names: dict[str, str] = {}
    params: dict[str, Any] = {}
    parts = []
    if query.status is not None:
        names["#st"] = "status"
        params[":st"] = query.status.value
        parts.append("#st = :st")
    if query.tag is not None:
        names["#tg"] = "tags"
        params[":tg"] = query.tag
        parts.append("contains(#tg, :tg)")
    return names, params, " AND ".join(parts) or None


def _summary(item: dict[str, Any]) -> MessageSummary:
    return MessageSummary.model_validate({k: item.get(k) for k in MessageSummary.model_fields})


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
