"""The preference centre behind ``/p/<token>``: a subscriber's public lists, their changes, and "send me my data".

The token is the one in the mail's unsubscribe link (``jetmail.messaging.compose.Composer.page_urls``), so it
names the message and the address. Changing a list here goes the way a change elsewhere goes: leaving a list
through the contact store (which publishes the stop event a running campaign follows), joining one through the
audience intake (a double opt-in list sends its confirmation mail first, even to someone who left it before).
The page's forms carry a CSRF token: an HMAC of the page's token and the time it was shown, valid for a day.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from jetmail.audience.model import Contact, ContactNotFound, ContactUpsert, SubscriptionStatus
from jetmail.messaging.messages import IdempotencyConflict
from jetmail.messaging.tokens import Signer

CSRF_PURPOSE = "preferences-form"
EXPORT_PURPOSE = "preferences-export"
CSRF_MAX_AGE_S = 86_400
EXPORT_FILENAME = "my-data.json"


class PublicList(Protocol):
    """A list subscribers see (``jetmail.audience.model.MailingList`` with ``public`` set)."""

    id: str
    public_id: str
    description: str | None
    opt_in: str

    @property
    def display_name(self) -> str: ...


class Contacts(Protocol):
    """``jetmail.audience.contacts.ContactStore``."""

    def get(self, email: str) -> Contact: ...

    def upsert(self, email: str, body: ContactUpsert) -> tuple[Contact, bool]: ...

    def public_lists(self) -> Sequence[Any]: ...


class Intake(Protocol):
    """How a subscriber joins a list (``jetmail.audience.intake.Intake``, made without a form challenge: the
    page's token and CSRF token stand for it)."""

    def subscribe(self, mailing_list: Any, fields: Mapping[str, Any], *, ip: str | None, referer: str | None,
                  language: str | None, source: Any = ...) -> None: ...


class Exporter(Protocol):
    """``jetmail.compliance.gdpr.PrivacyService``."""

    def export(self, email: str) -> Any: ...


class Mailer(Protocol):
    """Mails one message with one attachment through the transactional send (``jetmail.messaging.messages``)."""

    def __call__(self, *, to: str, subject: str, text: str, filename: str, data: bytes,
                 idempotency_key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ListChoice:
    public_id: str
    name: str
    description: str
    status: SubscriptionStatus | None  # None: never on the list


@dataclass(frozen=True, slots=True)
class Saved:
    joined: tuple[str, ...]  # public ids now subscribed, or pending their confirmation
    left: tuple[str, ...]


class PreferenceCentre:
    def __init__(self, *, contacts: Contacts, intake: Intake, privacy: Exporter, mailer: Mailer,
                 signer: Signer) -> None:
        self.contacts = contacts
        self.intake = intake
        self.privacy = privacy
        self.mailer = mailer
        self.signer = signer
        self.csrf = CsrfTokens(signer)

    def contact(self, email: str) -> Contact | None:
        try:
            return self.contacts.get(email)
        except ContactNotFound:
            return None

    def choices(self, contact: Contact | None) -> list[ListChoice]:
        """Every public list with the contact's status in it (one Query for the lists)."""
        lists = contact.lists if contact is not None else {}
        return [ListChoice(public_id=lst.public_id, name=lst.display_name, description=lst.description or "",
                           status=lists.get(lst.id)) for lst in self.contacts.public_lists()]

    def save(self, email: str, wanted: Iterable[str], *, ip: str | None, source_url: str | None) -> Saved:
        """Subscribe to the public lists ``wanted`` names (public ids) and leave every other public list.
        Lists already as wanted are left alone; joining goes through the intake (double opt-in: pending
        until confirmed); unknown ids are ignored."""
        contact = self.contact(email)
        current = contact.lists if contact is not None else {}
        wanted = set(wanted)
        joined: list[str] = []
        leave: dict[str, SubscriptionStatus] = {}
        left: list[str] = []
        for lst in self.contacts.public_lists():
            status = current.get(lst.id)
            if lst.public_id in wanted and status not in ("subscribed", "pending"):
                self.intake.subscribe(lst, {"email": email}, ip=ip, referer=source_url, source="preferences",
                                      language=contact.language if contact else None)
                joined.append(lst.public_id)
            elif lst.public_id not in wanted and status in ("subscribed", "pending"):
                leave[lst.id] = "unsubscribed"
                left.append(lst.public_id)
        if leave:
            self.contacts.upsert(email, ContactUpsert(lists=leave))
        return Saved(joined=tuple(joined), left=tuple(left))

    def send_data(self, email: str, *, subject: str, text: str) -> None:
        """Export everything held about ``email`` (GDPR art. 15) and mail it there as a JSON attachment, once an
        hour at most: a repeat within the hour is the same message (the transactional send's idempotency key)."""
        hour = datetime.now(UTC).strftime("%Y%m%d%H")
        key = f"data-export-{hour}-{self.signer.digest(EXPORT_PURPOSE, email.encode()).hex()[:24]}"
        data = self.privacy.export(email)
        body = json.dumps(data.model_dump(mode="json"), indent=2, ensure_ascii=False).encode()
        try:
            self.mailer(to=email, subject=subject, text=text, filename=EXPORT_FILENAME, data=body,
                        idempotency_key=key)
        except IdempotencyConflict:
            pass  # mailed within the hour already (the export then differed by its time)


class CsrfTokens:
    """The preference centre's form tokens: ``<issued>.<HMAC of the page's token and issued>``, valid for a day.
    Bound to the page, so a token seen on one subscriber's page is worth nothing on another's."""

    def __init__(self, signer: Signer, *, max_age_s: int = CSRF_MAX_AGE_S) -> None:
        self.signer = signer
        self.max_age_s = max_age_s

    def issue(self, token: str, *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        return f"{issued}.{self._mac(token, issued)}"

    def valid(self, token: str, value: str, *, now: float | None = None) -> bool:
        issued, dot, mac = value.partition(".")
        if not dot or not issued.isdigit() or len(issued) > 12:
            return False
        age = (now if now is not None else time.time()) - int(issued)
        return 0 <= age <= self.max_age_s and hmac.compare_digest(mac, self._mac(token, int(issued)))

    def _mac(self, token: str, issued: int) -> str:
        digest = self.signer.digest(CSRF_PURPOSE, f"{token}\x00{issued}".encode())
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:22]
