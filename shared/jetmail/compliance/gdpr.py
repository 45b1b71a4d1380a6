"""Everything held about one person: export it (GDPR art. 15/20) or erase it (art. 17).

What jetmail stores per address, who keeps it, and how each is found without a scan:

==============================  =====  ================================  ======================================
data                            table  kept by                           found by
==============================  =====  ================================  ======================================
contact                         main   ``contacts.ContactStore``         GetItem ``CONTACT#<email>``
list memberships (snapshots)    main   ``contacts.ContactStore``         the contact's ``lists`` map →
                                                                         BatchGetItem per 100 lists
messages (transactional, steps) main   ``messages.MessageRepository``    Query gsi1 ``RCPT#<email>``, ``MSG#…``
messages that copied it (cc,    main   ``messages.MessageRepository``    Query ``MSGCC#<email>`` (written with
bcc)                                                                     the message) → BatchGetItem per 100
sequence enrolments             main   ``sequences.SequenceService``     Query gsi1 ``RCPT#<email>``, ``SEQ#…``
soft-bounce log                 main   ``feedback.SoftBounces``          GetItem ``SOFT#<email>``
suppression entry               main   ``suppressions.SuppressionStore`` BatchGetItem ``SUPP#<email>`` and
                                                                         its pseudonym
delivery and engagement events  stats  ``feedback.EventLog``             Query gsi1 ``RCPT#<email>``, ``EVT#…``
==============================  =====  ================================  ======================================

Campaign mail writes no per-recipient rows: its events carry the address (found above), and a
planned batch item lists up to 100 addresses of one run until the campaign's rows are deleted.

Each keeper finds, exports and removes its own rows; this module asks them, in order. Erasure
suppresses the address's pseudonym first (so nothing can be sent while it runs), cancels pending
mail and sequence steps, strips the personal fields from message records (status and times stay
for the totals), takes the address out of the cc, bcc and dropped-recipient lists of the messages
that copied it (and deletes the rows that found them), and deletes events, enrolments, the
soft-bounce log, the contact and its memberships. What stays is the keyed pseudonym in the
suppression list: the address is never mailed again and cannot be read back, and it cannot become a
contact again (an upsert or import of it is refused).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from jetmail.audience.addresses import normalise_email
from jetmail.audience.contacts import ContactStore
from jetmail.audience.model import ContactNotFound
from jetmail.compliance.audit import AuditLog
from jetmail.deliverability.feedback import EventLog, FeedbackProcessor, SoftBounces
from jetmail.deliverability.suppressions import SuppressionStore
from jetmail.messaging.messages import MessageRepository
from jetmail.messaging.sequences import SequenceService


class PersonalData(BaseModel):
    """``GET /v1/contacts/{email}/export``."""

    email: str
    exported_at: str
    contact: dict[str, Any] | None = None
    memberships: list[dict[str, Any]] = Field(default_factory=list)
    consents: list[dict[str, Any]] = Field(default_factory=list, description="how the address joined each list: "
                                                                              "source, page, IP as kept, request "
                                                                              "and confirmation times")
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


class PrivacyService:
    def __init__(self, *, contacts: ContactStore, messages: MessageRepository, sequences: SequenceService,
                 events: EventLog, soft_bounces: SoftBounces, suppressions: SuppressionStore,
                 feedback: FeedbackProcessor, audit: AuditLog | None = None) -> None:
        self.contacts = contacts
        self.messages = messages
        self.sequences = sequences
        self.events = events
        self.soft_bounces = soft_bounces
        self.suppressions = suppressions
        self.feedback = feedback
        self.audit = audit

    def _address(self, email: str) -> str:
        return normalise_email(email.strip()).lower()

    # ---- export
    def export(self, email: str) -> PersonalData:
        """Everything held about ``email``. Raises InvalidAddress."""
        address = self._address(email)
        data = PersonalData(email=address, exported_at=datetime.now(UTC).isoformat())
        data.contact, data.memberships = self.contacts.export_of(address)
        names = {m["list_id"]: m.get("list_name") for m in data.memberships}
        data.consents = [{"list_id": list_id, "list_name": names.get(list_id), **record}
                         for list_id, record in ((data.contact or {}).get("consent") or {}).items()]
        data.messages = self.messages.export_of(address) + self.messages.copies_export_of(address)
        data.sequence_enrolments = self.sequences.enrolments_of(address)
        data.events = self.events.of_recipient(address)
        entry = self.suppressions.get(address)
        data.suppression = entry.model_dump() if entry else None
        data.soft_bounces = self.soft_bounces.of(address)
        return data

    # ---- erase
    def erase(self, email: str) -> ErasureReport:
        """Remove everything held about ``email`` but its pseudonym in the suppression list. Safe to
        repeat (a second call finds nothing left to remove). Raises InvalidAddress."""
        address = self._address(email)
        entry = self.suppressions.add_erased(address)  # first: nothing can be sent from here on
        cancelled = self.feedback.cancel_pending(address, reason="erased")
        scrubbed = self.messages.strip_personal(address) + self.messages.strip_copies(address)
        enrolments = self.sequences.forget(address)
        events = self.events.delete_of_recipient(address)
        self.soft_bounces.forget(address)
        try:
            memberships: int | None = self.contacts.delete(address)
        except ContactNotFound:
            memberships = None
        report = ErasureReport(pseudonym=entry.email, contact=memberships is not None, memberships=memberships or 0,
                               messages_scrubbed=scrubbed, messages_cancelled=cancelled,
                               events=events, sequence_enrolments=enrolments)
        if self.audit is not None:
            self.audit.record("contact.erased", target=entry.email,
                              changes=report.model_dump(exclude={"pseudonym"}))
        return report
