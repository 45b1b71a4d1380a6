"""Everything held about one person: export it (GDPR art. 15/20) or erase it (art. 17).

What jetmail stores per address, and how each is found without a scan:

==============================  ===========  ===============================================
data                            table        found by
==============================  ===========  ===============================================
contact                         main         GetItem ``CONTACT#<email>``
list memberships (snapshots)    main         the contact's ``lists`` map → GetItem per list
messages (transactional, steps) main         Query gsi1 ``RCPT#<email>``, ``MSG#…``
sequence enrolments             main         Query gsi1 ``RCPT#<email>``, ``SEQ#…``
soft-bounce log                 main         GetItem ``SOFT#<email>``
suppression entry               main         GetItem ``SUPP#<email>`` (or its pseudonym)
delivery and engagement events  stats        Query gsi1 ``RCPT#<email>``, ``EVT#…``
==============================  ===========  ===============================================

Campaign mail writes no per-recipient rows: its events carry the address (found above), and a
planned batch item lists up to 100 addresses of one run until the campaign's rows are deleted.

Erasure suppresses the address's pseudonym first (so nothing can be sent while it runs), cancels
pending mail and sequence steps, strips the personal fields from message records (status and
times stay for the totals), and deletes events, enrolments, the soft-bounce log, the contact and
its memberships. What stays is the keyed pseudonym in the suppression list: the address is never
mailed again and cannot be read back. A later import or upsert of the address is accepted (the
contact exists again) but every send to it stays suppressed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from jetmail.addresses import normalise_email
from jetmail.audit import AuditLog
from jetmail.contacts import ContactNotFound, ContactStore, contact_key, member_fields
from jetmail.feedback import FeedbackProcessor
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table, batch_get
from jetmail.suppressions import SuppressionStore

KEYS = ("pk", "sk", "gsi1pk", "gsi1sk")
# what a message record keeps after erasure: nothing that names or describes the person
MESSAGE_KEPT = ("pk", "sk", "id", "status", "template", "language", "category", "created_at", "updated_at",
                "send_at", "sent_at", "provider", "provider_message_id", "attempts", "campaign_id", "sequence_id",
                "sequence_step", "expires_at")
ERASED = "[erased]"


class PersonalData(BaseModel):
    """``GET /v1/contacts/{email}/export``."""

    email: str
    exported_at: str
    contact: dict[str, Any] | None = None
    memberships: list[dict[str, Any]] = Field(default_factory=list)
    messages: list[dict[str, Any]] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)
    suppression: dict[str, Any] | None = None
    sequence_enrolments: list[dict[str, Any]] = Field(default_factory=list)
    soft_bounces: list[str] = Field(default_factory=list)


class ErasureReport(BaseModel):
    """``DELETE /v1/contacts/{email}?erase=true``."""

    pseudonym: str = Field(description="the keyed hash kept in the suppression list")
    contact: bool = Field(description="a contact was deleted")
    memberships: int
    messages_scrubbed: int
    messages_cancelled: int
    events: int
    sequence_enrolments: int


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in KEYS and k != "expires_at"}


class PrivacyService:
    def __init__(self, *, table: Table, stats: Table, contacts: ContactStore, suppressions: SuppressionStore,
                 feedback: FeedbackProcessor, audit: AuditLog | None = None) -> None:
        self.table = table
        self.stats = stats
        self.contacts = contacts
        self.suppressions = suppressions
        self.feedback = feedback
        self.audit = audit

    # ---- finding
    def _address(self, email: str) -> str:
        return normalise_email(email.strip()).lower()

    def _recipient_items(self, address: str, prefix: str) -> list[dict[str, Any]]:
        return list(self.table.query_all(pk=keys.recipient(address), sk_prefix=prefix, index="gsi1"))

    def _events(self, address: str) -> list[dict[str, Any]]:
        return list(self.stats.query_all(pk=keys.recipient(address), sk_prefix=keys.EVENT_PREFIX, index="gsi1"))

    def _contact(self, address: str) -> dict[str, Any] | None:
        return self.table.get(*keys.contact(contact_key(address)), consistent=True)

    # ---- export
    def export(self, email: str) -> PersonalData:
        """Everything held about ``email``. Raises InvalidAddress."""
        address = self._address(email)
        data = PersonalData(email=address, exported_at=datetime.now(UTC).isoformat())
        contact = self._contact(address)
        if contact is not None:
            data.contact = _plain({k: v for k, v in contact.items() if k != "version"})
            lists = contact.get("lists") or {}
            names = {keys.list_id_of(item["pk"]): item.get("name")
                     for item in batch_get(self.table, [keys.list_meta(i) for i in lists])}
            members = batch_get(self.table, [keys.list_member(i, contact_key(address)) for i in lists],
                                consistent=True)
            data.memberships = [{**_plain(m), "list_name": names.get(m["list_id"])}
                                for m in map(member_fields, members)]
        for item in self._recipient_items(address, keys.MESSAGE_PREFIX):
            record = _plain(item)
            if isinstance(record.get("context"), str):
                record["context"] = json.loads(record["context"])
            data.messages.append(record)
        data.sequence_enrolments = [_plain(i) for i in self._recipient_items(address, keys.ENROLMENT_PREFIX)]
        data.events = [_plain(i) for i in self._events(address)]
        entry = self.suppressions.get(address)
        data.suppression = entry.model_dump() if entry else None
        soft = self.table.get(*keys.soft_bounces(address))
        data.soft_bounces = list((soft or {}).get("bounces") or [])
        return data

    # ---- erase
    def erase(self, email: str) -> ErasureReport:
        """Remove everything held about ``email`` but its pseudonym in the suppression list. Safe to
        repeat (a second call finds nothing left to remove). Raises InvalidAddress."""
        address = self._address(email)
        entry = self.suppressions.add_erased(address)  # first: nothing can be sent from here on
        cancelled = self.feedback.cancel_pending(address, reason="erased")
        scrubbed = 0
        for item in self._recipient_items(address, keys.MESSAGE_PREFIX):
            kept = {k: item[k] for k in MESSAGE_KEPT if item.get(k) is not None}
            kept["to"] = ERASED
            kept["history"] = [{"status": h.get("status"), "at": h.get("at")} for h in item.get("history") or []
                               if isinstance(h, dict)]
            try:
                self.table.put(kept, condition="attribute_exists(pk)")
            except ConditionFailed:
                continue
            scrubbed += 1
        enrolments = [(i["pk"], i["sk"]) for i in self._recipient_items(address, keys.ENROLMENT_PREFIX)]
        self.table.batch_delete(enrolments)
        events = [(i["pk"], i["sk"]) for i in self._events(address)]
        # events not tied to a message are filed under the address itself
        unattributed = keys.events_partition(keys.recipient_subject(address))
        events += [(i["pk"], i["sk"]) for i in self.stats.query_all(pk=unattributed)]
        events = list(dict.fromkeys(events))
        self.stats.batch_delete(events)
        self.table.delete(*keys.soft_bounces(address))
        contact = self._contact(address)
        memberships = len((contact or {}).get("lists") or {})
        try:
            self.contacts.delete(address)
        except ContactNotFound:
            contact = None
        report = ErasureReport(pseudonym=entry.email, contact=contact is not None, memberships=memberships,
                               messages_scrubbed=scrubbed, messages_cancelled=cancelled,
                               events=len(events), sequence_enrolments=len(enrolments))
        if self.audit is not None:
            self.audit.record("contact.erased", target=entry.email,
                              changes=report.model_dump(exclude={"pseudonym"}))
        return report
