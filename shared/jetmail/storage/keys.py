"""Every DynamoDB key jetmail reads or writes, made in one place, for both tables.

The main table holds what jetmail knows (keys, templates, messages, contacts, campaigns); the stats
table holds what happened to it (events and counters). Both are single-table designs on ``pk`` / ``sk``
with one GSI ``gsi1`` on ``gsi1pk`` / ``gsi1sk``. A module never spells a key itself: it asks this one,
so a key's shape changes here or nowhere. ``ENTITIES`` describes each row, the one repository that
owns it (the only code that reads or writes it) and how it is read; the storage reference
(docs/reference/storage.md) is generated from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple


class Key(NamedTuple):
    pk: str
    sk: str

    def item(self, **values: Any) -> dict[str, Any]:
        """The row's key attributes with ``values`` beside them."""
        return {"pk": self.pk, "sk": self.sk, **values}


# ---- main table

API_KEYS = "APIKEYS"  # gsi1 partition of every API key
TEMPLATES = "TEMPLATES"  # gsi1 partition of template heads
SEQUENCE_DEFINITIONS = "SEQDEFS"
LISTS = "LISTS"
SEGMENTS = "SEGMENTS"
CAMPAIGNS = "CAMPAIGNS"
DUE = "DUE"  # gsi1 partition of campaigns waiting for their start
SUPPRESSIONS = "SUPPRESSIONS"
AUDIT = "AUDIT"  # the partition of the audit log
CONTACT_SHARDS = 16


def by_time(at: str, name: str) -> str:
    """A gsi1 sort key that lists a partition in time order: ``<time>#<id or address>``."""
    return f"{at}#{name}"


def api_key(key_id: str) -> Key:
    return Key(f"APIKEY#{key_id}", "APIKEY")


def template_partition(name: str) -> str:
    return f"TEMPLATE#{name}"


HEAD_PREFIX = "HEAD#"


def template_head(name: str, locale: str) -> Key:
    return Key(template_partition(name), f"{HEAD_PREFIX}{locale}")


def template_versions_prefix(locale: str) -> str:
    return f"V#{locale}#"


def template_version(name: str, locale: str, version: int) -> Key:
    return Key(template_partition(name), f"{template_versions_prefix(locale)}{version:06d}")


def message(message_id: str) -> Key:
    return Key(f"MSG#{message_id}", "MSG")


def recipient(address: str) -> str:
    """gsi1 partition of everything sent to an address (messages, enrolments; events in the stats table).
    Keys hold addresses lower-cased: callers pass them so."""
    return f"RCPT#{address}"


MESSAGE_PREFIX = "MSG#"  # gsi1 sort keys of messages in a recipient's partition
ENROLMENT_PREFIX = "SEQ#"  # ... and of sequence enrolments
EVENT_PREFIX = "EVT#"  # ... and of events (stats table)


def by_recipient(prefix: str, created: str) -> str:
    """A gsi1 sort key in a recipient's partition: ``<kind prefix><time>``."""
    return f"{prefix}{created}"


def idempotency(api_key_id: str | None, key_digest: str) -> Key:
    return Key(f"IDEM#{api_key_id or '-'}#{key_digest}", "IDEM")


def sequence_definition(name: str) -> Key:
    return Key(f"SEQDEF#{name}", "DEF")


def enrolment(enrolment_id: str) -> Key:
    return Key(f"{ENROLMENT_PREFIX}{enrolment_id}", "ENROL")


def contact(contact_key: str) -> Key:
    return Key(f"CONTACT#{contact_key}", "CONTACT")


def contact_shard(shard: int) -> str:
    """gsi1 partition of one of the CONTACT_SHARDS shards that together hold every contact."""
    return f"CONTACTS#{shard}"


LIST_PREFIX = "LIST#"
MEMBER_PREFIX = "MEMBER#"


def list_partition(list_id: str) -> str:
    return f"{LIST_PREFIX}{list_id}"


def list_meta(list_id: str) -> Key:
    return Key(list_partition(list_id), "META")


def list_member(list_id: str, contact_key: str) -> Key:
    return Key(list_partition(list_id), f"{MEMBER_PREFIX}{contact_key}")


def list_id_of(pk: str) -> str:
    return pk.removeprefix(LIST_PREFIX)


PENDING = "PENDING"  # the partition of subscriptions waiting for their confirmation, oldest first


def pending_subscription(requested_at: str, list_id: str, contact_key: str) -> Key:
    return Key(PENDING, f"{requested_at}#{list_id}#{contact_key}")


def segment(segment_id: str) -> Key:
    return Key(f"SEGMENT#{segment_id}", "META")


def campaign_partition(campaign_id: str) -> str:
    """The campaign's partition, in the main table (definition, batches) and the stats table (counters)."""
    return f"CAMPAIGN#{campaign_id}"


def campaign(campaign_id: str) -> Key:
    return Key(campaign_partition(campaign_id), "META")


BATCH_PREFIX = "BATCH#"
PARKED_PREFIX = "PARKED#"


def batches_prefix(run: str) -> str:
    return f"{BATCH_PREFIX}{run}#"


def batch_sk(run: str, batch: int) -> str:
    return f"{batches_prefix(run)}{batch:06d}"


def batch(campaign_id: str, run: str, number: int) -> Key:
    return Key(campaign_partition(campaign_id), batch_sk(run, number))


BATCH_SK = re.compile(rf"{re.escape(BATCH_PREFIX)}[a-z0-9-]+#[0-9]{{6,}}")  # a batch_sk (fullmatch it)


def batch_of(sk: str) -> tuple[str, int]:
    """The run and number a batch's (or parked batch's) sort key names."""
    _, run, number = sk.split("#", 2)
    return run, int(number)


def parked_batch(campaign_id: str, run: str, number: int) -> Key:
    return Key(campaign_partition(campaign_id), f"{PARKED_PREFIX}{run}#{number:06d}")


PLAN_PART_PREFIX = "PLANPART#"


def plan_parts_prefix(run: str) -> str:
    return f"{PLAN_PART_PREFIX}{run}#"


def plan_part(campaign_id: str, run: str, part: str) -> Key:
    return Key(campaign_partition(campaign_id), f"{plan_parts_prefix(run)}{part}")


def campaign_due(campaign_id: str) -> Key:
    return Key(campaign_partition(campaign_id), "DUE")


SUPPRESSION_PREFIX = "SUPP#"


def suppression(address: str) -> Key:
    return Key(f"{SUPPRESSION_PREFIX}{address}", "SUPP")


ERASED = "SUPP#ERASED"  # the partition of erased addresses' pseudonyms


def erased(digest: str) -> Key:
    """An erased address: its keyed pseudonym (the hex HMAC digest) in the ERASED partition."""
    return Key(ERASED, digest)


def soft_bounces(address: str) -> Key:
    return Key(f"SOFT#{address}", "SOFT")


def audit_entry(at: str, entry_id: str) -> Key:
    """An audit entry; its sort key orders the log by time (``at`` is ISO 8601 in UTC)."""
    return Key(AUDIT, by_time(at, entry_id))


# ---- stats table

STATS = "STATS"  # account-wide counters
TOTALS = "TOTALS"
DAY_PREFIX = "DAY#"
HOUR_PREFIX = "HOUR#"
VARIANT_PREFIX = "VARIANT#"
FIRST_PREFIX = "FIRST#"
LINK_PREFIX = "LINK#"
COUNTRY_PREFIX = "COUNTRY#"
DEVICE_PREFIX = "DEVICE#"


def day(date_iso: str) -> str:
    return f"{DAY_PREFIX}{date_iso}"


def hour(hour_iso: str) -> str:
    """``hour_iso`` is ``YYYY-MM-DDTHH``."""
    return f"{HOUR_PREFIX}{hour_iso}"


def variant(name: str) -> str:
    return f"{VARIANT_PREFIX}{name}"


def link(index: int) -> str:
    return f"{LINK_PREFIX}{index:04d}"


def country(code: str) -> str:
    return f"{COUNTRY_PREFIX}{code}"


def device(family: str) -> str:
    return f"{DEVICE_PREFIX}{family}"


def campaign_counter(campaign_id: str, sk: str) -> Key:
    return Key(campaign_partition(campaign_id), sk)


def account_counter(sk: str) -> Key:
    return Key(STATS, sk)


def send_mark(key: str) -> Key:
    """The once-only mark of a counted send (a batch or a message)."""
    return Key(f"SENT#{key}", "SENT")


def events_partition(subject: str) -> str:
    """A message's events (``subject`` is its id, or ``rcpt:<address>`` for events without a message)."""
    return f"{EVENT_PREFIX}{subject}"


def recipient_subject(address: str) -> str:
    """The events ``subject`` of an address's events that name no message. Callers pass it lower-cased."""
    return f"rcpt:{address}"


def event_kind_prefix(kind: str) -> str:
    """The sort-key prefix of a message's events of one kind (``click#``...)."""
    return f"{kind}#"


def event(subject: str, kind: str, event_id: str) -> Key:
    return Key(events_partition(subject), f"{event_kind_prefix(kind)}{event_id}")


def first_marker(subject: str, marker: str) -> Key:
    """The once-only mark of a message's first event of a kind (``marker``: ``open``, ``click_human``...)."""
    return Key(events_partition(subject), f"{FIRST_PREFIX}{marker}")


# ---- outgoing webhooks (main table): an endpoint's partition holds it, the events sent to it and every attempt

WEBHOOKS = "WEBHOOKS"  # gsi1 partition of every webhook endpoint
WEBHOOK_EVENT_PREFIX = "EVT#"
WEBHOOK_ATTEMPT_PREFIX = "DLV#"


def webhook_partition(endpoint_id: str) -> str:
    return f"WHEP#{endpoint_id}"


def webhook_endpoint(endpoint_id: str) -> Key:
    return Key(webhook_partition(endpoint_id), "WHEP")


def webhook_event(endpoint_id: str, event_id: str) -> Key:
    """One event as sent to one endpoint (what a replay sends again), with its first attempt."""
    return Key(webhook_partition(endpoint_id), f"{WEBHOOK_EVENT_PREFIX}{event_id}")


def webhook_event_attempt(endpoint_id: str, event_id: str, at: str, attempt: int) -> Key:
    """A later attempt (a retry, a replay) at one message's event: its entry in the message's timeline."""
    return Key(webhook_partition(endpoint_id), f"{WEBHOOK_EVENT_PREFIX}{event_id}#{at}#{attempt:04d}")


def webhook_attempt_sk(at: str, event_id: str, attempt: int) -> str:
    """Delivery-log rows sort by time: a range of them is one Query between two times. A row holds the
    attempts of one delivery job (named by its first), or of one attempt in rows written before jobs did."""
    return f"{WEBHOOK_ATTEMPT_PREFIX}{at}#{event_id}#{attempt:04d}"


def webhook_attempt(endpoint_id: str, at: str, event_id: str, attempt: int) -> Key:
    return Key(webhook_partition(endpoint_id), webhook_attempt_sk(at, event_id, attempt))


_LOG_POSITION = "~"  # after every character of a row's sort key: a position sorts just above its row


def webhook_log_position(sk: str, skip: int) -> str:
    """A page boundary inside one delivery-log row, after its ``skip`` newest attempts: a sort key that a
    newest-first Query starting after it reads that row again from, and nothing above it."""
    return f"{sk}{_LOG_POSITION}{skip}"


def webhook_log_position_parts(position: str) -> tuple[str, int]:
    """The row's sort key and the attempts to skip in it (0 for a plain sort key)."""
    sk, mark, skip = position.rpartition(_LOG_POSITION)
    return (sk, int(skip)) if mark and skip.isdigit() else (position, 0)


def webhook_message(message_id: str) -> str:
    """gsi1 partition of the delivery attempts of one message's events: its timeline's webhook entries."""
    return f"WHMSG#{message_id}"


# ---- the message log's index rows (main table): one per tag of a message and one per day, written with it

def message_tag_partition(tag: str) -> str:
    """The messages carrying ``tag``, newest last by ``message_index_sk``."""
    return f"MSGTAG#{tag}"


def message_day_partition(day: str) -> str:
    """The messages created on ``day`` (``yyyy-mm-dd``, UTC)."""
    return f"MSGDAY#{day}"


def message_copy_partition(address: str) -> str:
    """The messages that copied ``address`` (cc or bcc, lower-cased): how erasure and export find them."""
    return f"MSGCC#{address}"


def message_index_sk(created: str, message_id: str) -> str:
    return by_time(created, message_id)


def message_index(partition: str, created: str, message_id: str) -> Key:
    return Key(partition, message_index_sk(created, message_id))


# ---- the registry the storage reference is generated from

@dataclass(frozen=True)
class Entity:
    name: str
    table: str
    pk: str
    sk: str
    gsi1: str
    owner: str  # the repository class that reads and writes the row, as ``module.Class``
    reads: str


ENTITIES: tuple[Entity, ...] = (
    Entity("API key", "main", "APIKEY#<key id>", "APIKEY", "APIKEYS / created", "jetmail.compliance.apikeys.ApiKeys",
           "GetItem to authenticate; Query gsi1 to list"),
    Entity("template head (latest)", "main", "TEMPLATE#<name>", "HEAD#<locale>", "TEMPLATES / name#locale",
           "jetmail.messaging.templates.TemplateStore", "GetItem for a send; Query gsi1 to list"),
    Entity("template version", "main", "TEMPLATE#<name>", "V#<locale>#<version:06d>", "-",
           "jetmail.messaging.templates.TemplateStore", "GetItem; Query begins_with V#<locale># for the history"),
    Entity("message", "main", "MSG#<id>", "MSG", "RCPT#<email> / MSG#<created>",
           "jetmail.messaging.messages.MessageRepository",
           "GetItem for status; conditional UpdateItem to claim; Query gsi1 per recipient (cancel, export, erase)"),
    Entity("idempotency record", "main", "IDEM#<key id>#<sha256 of the key>", "IDEM", "-",
           "jetmail.messaging.messages.MessageService",
           "conditional PutItem before the message's own; GetItem when a retry finds it taken"),
    Entity("sequence definition", "main", "SEQDEF#<name>", "DEF", "SEQDEFS / name",
           "jetmail.messaging.sequences.SequenceService",
           "GetItem; Query gsi1 to list"),
    Entity("sequence enrolment", "main", "SEQ#<enrolment id>", "ENROL", "RCPT#<email> / SEQ#<created>",
           "jetmail.messaging.sequences.SequenceService", "GetItem; Query gsi1 per recipient (cancel, export, erase)"),
    Entity("contact", "main", "CONTACT#<email>", "CONTACT", "CONTACTS#<0-15> / email",
           "jetmail.audience.contacts.ContactStore",
           "GetItem / BatchGetItem; Query gsi1 shard by shard to page through all"),
    Entity("contact list", "main", "LIST#<id>", "META", "LISTS / created#id", "jetmail.audience.contacts.ContactStore",
           "GetItem; Query gsi1 to list"),
    Entity("list membership + snapshot", "main", "LIST#<id>", "MEMBER#<email>", "-",
           "jetmail.audience.contacts.ContactStore",
           "Query the list partition (filter on status): a plan streams it, ~1 MB a page; BatchGetItem of a "
           "contact's memberships for an export"),
    Entity("pending subscription", "main", "PENDING", "<requested>#<list id>#<email>", "-",
           "jetmail.audience.contacts.ContactStore",
           "PutItem when a double opt-in subscription is asked for, DeleteItem on its confirmation; Query the "
           "partition up to a time on every scheduler tick to expire unconfirmed ones"),
    Entity("segment", "main", "SEGMENT#<id>", "META", "SEGMENTS / created#id", "jetmail.audience.segments.SegmentStore",
           "GetItem; Query gsi1 to list"),
    Entity("campaign", "main", "CAMPAIGN#<id>", "META", "CAMPAIGNS / created#id",
           "jetmail.campaigns.store.CampaignStore",
           "GetItem; conditional UpdateItem for state changes; Query gsi1 to list"),
    Entity("planned batch (+ its failures)", "main", "CAMPAIGN#<id>", "BATCH#<run>#<n:06d>", "-",
           "jetmail.campaigns.store.CampaignStore", "BatchWriteItem when planned; Query begins_with BATCH#<run># to "
           "re-plan; GetItem to attribute a message id; Query begins_with BATCH# (filter on failures) to list "
           "failures"),
    Entity("parked batch", "main", "CAMPAIGN#<id>", "PARKED#<run>#<n:06d>", "-",
           "jetmail.campaigns.store.CampaignStore", "Query begins_with PARKED# on resume"),
    Entity("plan part", "main", "CAMPAIGN#<id>", "PLANPART#<run>#<part>", "-",
           "jetmail.campaigns.store.CampaignStore",
           "conditional PutItem when a plan job hands part of its address range to a new one; Query begins_with "
           "PLANPART#<run># when a part finishes, to see whether the run is planned"),
    Entity("due start", "main", "CAMPAIGN#<id>", "DUE", "DUE / at#id", "jetmail.campaigns.store.CampaignStore",
           "Query the whole gsi1 partition on every tick, keeping those at or before now"),
    Entity("suppression", "main", "SUPP#<email>", "SUPP", "SUPPRESSIONS / at#email",
           "jetmail.deliverability.suppressions.SuppressionStore",
           "GetItem / BatchGetItem per address; Query gsi1 to list"),
    Entity("erased address", "main", "SUPP#ERASED", "<keyed pseudonym>", "SUPPRESSIONS / at#hmac:<pseudonym>",
           "jetmail.deliverability.suppressions.SuppressionStore",
           "BatchGetItem with the address's own entry; Query the partition for all pseudonyms; listed with "
           "the suppressions (gsi1)"),
    Entity("soft-bounce log", "main", "SOFT#<email>", "SOFT", "-", "jetmail.deliverability.feedback.SoftBounces",
           "UpdateItem per bounce; GetItem per contact in the list review "
           "(jetmail.deliverability.reputation) and for an export"),
    Entity("audit entry", "main", "AUDIT", "<time>#<id>", "-", "jetmail.compliance.audit.AuditLog",
           "PutItem per management action; Query between two times, newest first"),
    Entity("event", "stats", "EVT#<message id | rcpt:<email>>", "<kind>#<event id>", "RCPT#<email> / EVT#<time>",
           "jetmail.deliverability.feedback.EventLog",
           "conditional PutItem (exactly once); Query gsi1 per recipient (export, "
           "erase); Query begins_with click# of the message per click, to spot a scanner's link burst "
           "(jetmail.deliverability.machines)"),
    Entity("first-event marker", "stats", "EVT#<message id>", "FIRST#<kind>[_human]", "-",
           "jetmail.deliverability.feedback.EventLog",
           "conditional PutItem: unique opens and clicks"),
    Entity("send mark", "stats", "SENT#<batch or message>", "SENT", "-", "jetmail.reporting.counters.Counters",
           "conditional PutItem in the counters' transaction"),
    Entity("campaign counters", "stats", "CAMPAIGN#<id>",
           "TOTALS | HOUR#<hour> | VARIANT#<name> | LINK#<n:04d> | COUNTRY#<cc> | DEVICE#<family>", "-",
           "jetmail.reporting.counters.Counters",
           "ADD in the event's (or the send's) transaction; one Query of the partition "
           "per report; GetItem TOTALS per running campaign on every reputation check"),
    Entity("account counters", "stats", "STATS", "DAY#<date> | HOUR#<yyyy-mm-ddThh>", "-",
           "jetmail.reporting.counters.Counters",
           "ADD per event and per counted send; Query a range for reports and the reputation monitor"),
    Entity("webhook endpoint", "main", "WHEP#<id>", "WHEP", "WEBHOOKS / created#id",
           "jetmail.webhooks.endpoints.EndpointStore",
           "GetItem; Query gsi1 to list (cached per process, re-read in the background for the emitter)"),
    Entity("webhook event (per endpoint)", "main", "WHEP#<id>", "EVT#<event id>", "WHMSG#<message id> / <time>",
           "jetmail.webhooks.deliveries.DeliveryLog",
           "the event and its first attempt, written with its delivery job's log; BatchGetItem to replay; "
           "Query gsi1 for a message's timeline"),
    Entity("webhook later attempt (message events)", "main", "WHEP#<id>", "EVT#<event id>#<time>#<attempt:04d>",
           "WHMSG#<message id> / <time>", "jetmail.webhooks.deliveries.DeliveryLog",
           "a retry's or replay's attempt at a message's event, for its timeline; Query gsi1"),
    Entity("webhook delivery log (per delivery job)", "main", "WHEP#<id>", "DLV#<time>#<event id>#<attempt:04d>",
           "-", "jetmail.webhooks.deliveries.DeliveryLog",
           "every attempt of one delivery job packed in one row (more rows past 300 KB), written with the "
           "job's event rows, 25 rows a BatchWriteItem (with a TTL); Query begins_with DLV# newest first, or "
           "between two times"),
    Entity("message by tag", "main", "MSGTAG#<tag>", "<created>#<message id>", "-",
           "jetmail.messaging.messages.MessageRepository",
           "PutItem in the message's own transaction (one per tag); Query between two times, newest first, "
           "then BatchGetItem of the page's messages (the message log's tag search)"),
    Entity("message by day", "main", "MSGDAY#<yyyy-mm-dd>", "<created>#<message id>", "-",
           "jetmail.messaging.messages.MessageRepository",
           "PutItem in the message's own transaction; Query day by day between two times, newest first, then "
           "BatchGetItem of the page's messages (the message log's search by status or time alone)"),
    Entity("message by copied address", "main", "MSGCC#<email>", "<created>#<message id>", "-",
           "jetmail.messaging.messages.MessageRepository",
           "PutItem in the message's own transaction (one per cc and bcc address); Query then BatchGetItem of "
           "the messages (GDPR export and erasure of an address that was only copied)"),
)
