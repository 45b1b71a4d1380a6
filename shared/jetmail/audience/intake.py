"""Subscribers joining public lists on their own: the subscribe form, double opt-in and the consent record.

``POST /subscribe/{public id}`` (``jetmail.api.intake``) hands a request here. The answer never says what
happened (pending, subscribed already, refused by the honeypot): the form cannot be used to learn who is
subscribed. A double opt-in list (the default) and anyone returning after an unsubscribe get a confirmation
mail from the shipped ``confirm_subscription`` template, sent as transactional mail through the one message
service (global suppressions hold it back, list unsubscribes do not). Its link carries a signed token with
the request's time and its expiry; confirming is a POST (link scanners fetch GETs), and is idempotent.
Unconfirmed requests expire after ``pending_expiry_days``: the scheduler tick drops them
(``ContactStore.expire_pending``), reading only the time-ordered pending rows that are due.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jetmail.audience.addresses import InvalidAddress, normalise_email
from jetmail.audience.contacts import ContactStore
from jetmail.audience.fields import OneLine
from jetmail.audience.model import Consent, ContactFields, MailingList, check_attributes, now_iso
from jetmail.messaging.tokens import Signer

CONFIRM_PURPOSE = "confirm-subscription"
CONFIRM_TEMPLATE = "confirm_subscription"
HONEYPOT = "website"  # the field a person never sees nor fills; bots fill every field
POW_FIELD = "pow"
POW_WINDOW_MINUTES = 10
MAX_SOURCE_URL = 500


class InvalidSubscription(ValueError):
    """The request cannot be taken: a bad address, a value too long, a failed challenge."""


class Mailer(Protocol):
    """What sends the confirmation: the one message service (``MessageService.submit``), and the template
    store it renders from."""

    templates: Any

    def submit(self, request: Any, *, api_key_id: str | None = ..., idempotency_key: str | None = ...,
               extra: dict[str, Any] | None = ...) -> tuple[Any, bool]: ...


class AuditTrail(Protocol):
    def record(self, action: str, *, target: str, changes: dict[str, Any] | None = ...,
               actor: str | None = ...) -> Any: ...


class Challenge(Protocol):
    """A check a public form post must pass (``JETMAIL_SUBSCRIBE_CHALLENGE``): a proof of work, a CAPTCHA.

    ``form_html`` is markup (and script) the form snippet carries for it; ``verify`` gets the post's fields
    and is True when they pass. A ``module:Class`` setting names a class made with the settings."""

    def form_html(self, public_id: str) -> str: ...

    def verify(self, public_id: str, email: str, fields: Mapping[str, str]) -> bool: ...


class ProofOfWork:
    """Hashcash-style: the browser finds a nonce such that SHA-256 of ``<public id>:<email>:<minute>:<nonce>``
    starts with ``bits`` zero bits, and posts ``pow=<minute>:<nonce>``; ``<minute>`` (Unix minutes) must be
    within ten minutes of now. Costs a bot as much per address as a person's browser."""

    def __init__(self, bits: int, *, clock: Callable[[], float] = time.time) -> None:
        self.bits = bits
        self.clock = clock

    def form_html(self, public_id: str) -> str:
        # finds the nonce when the form is submitted, then submits it; no library, no network
        return (f'<input type="hidden" name="{POW_FIELD}" value="">'
                "<script>(function(f){f=document.currentScript.closest('form');f.addEventListener('submit',"
                "async function(e){var p=f.elements." + POW_FIELD + ";if(p.value)return;e.preventDefault();"
                "var m=Math.floor(Date.now()/60000),em=f.elements.email.value.trim().toLowerCase(),"
                f"b={self.bits},n=0;for(;;n++){{var d=new Uint8Array(await crypto.subtle.digest('SHA-256',"
                f"new TextEncoder().encode('{public_id}:'+em+':'+m+':'+n))),z=0,i=0;"
                "while(i<d.length&&d[i]===0){z+=8;i++}if(i<d.length)z+=Math.clz32(d[i])-24;"
                "if(z>=b)break}p.value=m+':'+n;f.submit()})})()</script>")

    def verify(self, public_id: str, email: str, fields: Mapping[str, str]) -> bool:
        minute, _, nonce = (fields.get(POW_FIELD) or "").partition(":")
        if not minute.isdigit() or not nonce or len(nonce) > 20:
            return False
        if abs(int(self.clock() // 60) - int(minute)) > POW_WINDOW_MINUTES:
            return False
        digest = hashlib.sha256(f"{public_id}:{email.lower()}:{minute}:{nonce}".encode()).digest()
        return int.from_bytes(digest, "big") >> (256 - self.bits) == 0


def make_challenge(setting: str, *, bits: int, settings: Any = None) -> Challenge | None:
    """The challenge ``JETMAIL_SUBSCRIBE_CHALLENGE`` names: none, the built-in proof of work, or your class."""
    if setting == "none":
        return None
    if setting == "pow":
        return ProofOfWork(bits)
    module, _, name = setting.partition(":")
    made: Challenge = getattr(importlib.import_module(module), name)(settings)
    return made


class SubscribeRequest(BaseModel):
    """A form post or JSON body of ``POST /subscribe/{public id}``. Attributes the list does not allow on
    its form are ignored."""

    model_config = ConfigDict(extra="ignore")
    email: str = Field(min_length=3, max_length=320)
    name: OneLine | None = Field(default=None, max_length=200)
    attributes: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, max_length=MAX_SOURCE_URL, description="the page the form is on")
    language: str | None = Field(default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return normalise_email(value.strip())
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_attributes(value)
        return value

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], allowed: list[str]) -> SubscribeRequest:
        """From a form's (or a JSON object's) fields: allowed attributes may come as fields of their own or
        inside ``attributes``. Raises InvalidSubscription."""
        nested = fields.get("attributes")
        attributes = {k: v for k, v in (nested if isinstance(nested, dict) else {}).items() if k in allowed}
        attributes.update({k: fields[k] for k in allowed if k in fields and fields[k] not in ("", None)})
        try:
            return cls.model_validate({**{k: v for k, v in fields.items() if k != "attributes" and v != ""},
                                       "attributes": attributes})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidSubscription(f"{where}: {first['msg']}") from None


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What a confirmation link names."""

    email: str
    list_id: str
    requested_at: str


def kept_ip(ip: str | None, mode: str, *, signer: Signer) -> str | None:
    """The client address as the consent record keeps it (``JETMAIL_CONSENT_IP``)."""
    if not ip:
        return None
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if mode == "full":
        return str(parsed)
    if mode == "truncate":
        prefix = 24 if parsed.version == 4 else 48
        return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False).network_address)
    # keyed, so the 2^32 IPv4 addresses cannot simply be hashed and compared
    return "sha256:" + signer.digest("consent-ip", str(parsed).encode()).hex()[:16]


class Intake:
    def __init__(self, *, contacts: ContactStore, mailer: Mailer, signer: Signer, audit: AuditTrail | None,
                 pseudonym: Callable[[str], str], base_url: str, consent_ip: str = "hash", expiry_days: int = 7,
                 default_locale: str = "en", challenge: Challenge | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.contacts = contacts
        self.mailer = mailer
        self.signer = signer
        self.audit = audit
        self.pseudonym = pseudonym
        self.base_url = base_url.rstrip("/")
        self.consent_ip = consent_ip
        self.expiry = timedelta(days=expiry_days)
        self.default_locale = default_locale
        self.challenge = challenge
        self.clock = clock

    # ---- subscribe
    def subscribe(self, mailing_list: MailingList, fields: Mapping[str, Any], *, ip: str | None,
                  referer: str | None, language: str | None,
                  source: Literal["form", "api", "preferences"] = "form") -> None:
        """Take one subscribe request for a public list (``ContactStore.public_list``); returns the same
        whatever became of it. Raises InvalidSubscription."""
        public_id = mailing_list.public_id or ""
        if fields.get(HONEYPOT):
            return  # a bot: answered like anyone, nothing stored
        request = SubscribeRequest.from_fields(fields, mailing_list.form_fields)
        # the preference centre's signed link already names its contact: no challenge there
        if self.challenge is not None and source != "preferences" and not self.challenge.verify(
                public_id, request.email, {k: str(v) for k, v in fields.items() if isinstance(v, str | int)}):
            raise InvalidSubscription("the form's check did not pass: reload the page and send it again")
        url = (request.source or referer or "")[:MAX_SOURCE_URL] or None
        consent = Consent(source=source, source_url=url, ip=kept_ip(ip, self.consent_ip, signer=self.signer),
                          requested_at=now_iso())
        profile = ContactFields.model_validate({
            **({"name": request.name} if request.name else {}),
            **({"language": request.language or language} if request.language or language else {}),
            "attributes": request.attributes})
        outcome, consent = self.contacts.subscribe(request.email, mailing_list=mailing_list, fields=profile,
                                                   consent=consent)
        if outcome == "unchanged":
            return
        if outcome == "pending":
            self._send_confirmation(request.email, mailing_list, consent, request.name,
                                    request.language or language)
        self._record("subscription.requested" if outcome == "pending" else "subscription.confirmed",
                     request.email, mailing_list.id, consent)

    def _send_confirmation(self, email: str, mailing_list: MailingList, consent: Consent, name: str | None,
                           language: str | None) -> None:
        from jetmail.messaging.messages import SendRequest

        token = self.confirm_token(email, mailing_list.id, consent.requested_at)
        contact_language = self._language(email) or language or self.default_locale
        request = SendRequest(template=CONFIRM_TEMPLATE, to=email, name=name, language=contact_language,
                              context={"confirm_url": f"{self.base_url}/confirm/{token}",
                                       "list_name": mailing_list.display_name,
                                       "list_description": mailing_list.description or "",
                                       "expires_in_days": self.expiry.days},
                              tags=["confirm-subscription"])
        # at most one confirmation an hour per pending request, however often the form is sent
        hour = int(self.clock().timestamp() // 3600)
        key = f"confirm:{mailing_list.id}:{email}:{consent.requested_at}:{hour}"
        from jetmail.messaging.templates import TemplateNotFound

        try:
            self.mailer.submit(request, idempotency_key=key)
        except TemplateNotFound:
            self._install_confirmation()
            self.mailer.submit(request, idempotency_key=key)

    def _install_confirmation(self) -> None:
        """Save the shipped confirmation template, and the layout it extends when there is none, the first time
        a confirmation finds no template: a public list works without ``jetmail templates sync`` first. A
        template of that name saved by the user is never replaced."""
        from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir

        store = self.mailer.templates
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):  # layouts first
            if content.name in (CONFIRM_TEMPLATE, "layout") and store.head(content.name, content.locale,
                                                                             cached=False) is None:
                store.save(content)

    def _language(self, email: str) -> str | None:
        from jetmail.audience.model import ContactNotFound

        try:
            return self.contacts.get(email).language
        except ContactNotFound:
            return None

    def _record(self, action: str, email: str, list_id: str, consent: Consent) -> None:
        if self.audit is not None:
            self.audit.record(action, target=self.pseudonym(email), actor="subscriber",
                              changes={"list": list_id, **consent.model_dump(exclude_none=True)})

    # ---- confirm
    def confirm_token(self, email: str, list_id: str, requested_at: str) -> str:
        expires = datetime.fromisoformat(requested_at) + self.expiry
        return self.signer.sign(CONFIRM_PURPOSE, {"e": email, "l": list_id, "r": requested_at,
                                                  "x": int(expires.timestamp())})

    def confirmation(self, token: str) -> Confirmation | None:
        """What a confirmation token names, or None when it is forged, malformed or expired. Reads nothing."""
        payload = self.signer.verify(CONFIRM_PURPOSE, token)
        if payload is None or not isinstance(payload.get("x"), int) or payload["x"] < self.clock().timestamp():
            return None
        if not all(isinstance(payload.get(k), str) for k in ("e", "l", "r")):
            return None
        return Confirmation(email=payload["e"], list_id=payload["l"], requested_at=payload["r"])

    def confirm(self, token: str) -> tuple[Confirmation, MailingList] | None:
        """Confirm the subscription a token names (idempotently); None when the token or its request is no
        longer good: forged, expired, superseded, or the contact unsubscribed since."""
        found = self.confirmation(token)
        if found is None:
            return None
        from jetmail.audience.model import ListNotFound

        try:
            mailing_list = self.contacts.get_list(found.list_id)
        except ListNotFound:
            return None
        outcome = self.contacts.confirm(found.email, list_id=found.list_id, requested_at=found.requested_at)
        if outcome == "stale":
            return None
        if outcome == "confirmed":
            contact = self.contacts.get(found.email)
            self._record("subscription.confirmed", found.email, found.list_id, contact.consent[found.list_id])
        return found, mailing_list

    def list_of(self, confirmation: Confirmation) -> MailingList | None:
        from jetmail.audience.model import ListNotFound

        try:
            return self.contacts.get_list(confirmation.list_id)
        except ListNotFound:
            return None

    # ---- expiry
    def expire(self) -> int:
        """Drop unconfirmed requests older than the expiry; returns how many."""
        return expire_unconfirmed(self.contacts, before=self.clock() - self.expiry, audit=self.audit,
                                  pseudonym=self.pseudonym)

    # ---- the form
    def form_snippet(self, mailing_list: MailingList) -> str:
        """An HTML form to paste into a web page: posts to this API's public subscribe endpoint."""
        return form_snippet(mailing_list, base_url=self.base_url, challenge=self.challenge)


def expire_unconfirmed(contacts: ContactStore, *, before: datetime, audit: AuditTrail | None,
                       pseudonym: Callable[[str], str]) -> int:
    """Drop the subscriptions asked for before ``before`` and never confirmed (the scheduler tick, with
    ``JETMAIL_PENDING_EXPIRY_DAYS``); returns how many. Each is in the audit trail."""
    expired = contacts.expire_pending(before)
    for email, list_id in expired:
        if audit is not None:
            audit.record("subscription.expired", target=pseudonym(email), actor="system", changes={"list": list_id})
    return len(expired)


def form_snippet(mailing_list: MailingList, *, base_url: str, challenge: Challenge | None = None) -> str:
    """An HTML form to paste into a web page: posts to ``<base_url>/subscribe/<public id>``, with labels, the
    honeypot, and what ``challenge`` needs. Raises InvalidSubscription for a private list."""
    if not mailing_list.public or not mailing_list.public_id:
        raise InvalidSubscription(f"list {mailing_list.id} is not public: make it public first "
                                  "(PATCH /v1/lists/{id} with public=true, or jetmail lists update --public)")
    pid = html.escape(mailing_list.public_id)
    title = html.escape(mailing_list.display_name)
    fields = "".join(
        f'<p><label for="jm-{pid}-{html.escape(f)}">{html.escape(f.replace("_", " ").capitalize())}</label>'
        f'<input id="jm-{pid}-{html.escape(f)}" name="{html.escape(f)}"></p>'
        for f in mailing_list.form_fields)
    extra = challenge.form_html(mailing_list.public_id) if challenge is not None else ""
    action = html.escape(f"{base_url.rstrip('/')}/subscribe/{mailing_list.public_id}")
    description = (f"<p>{html.escape(mailing_list.description)}</p>" if mailing_list.description else "")
    return (
        f'<form class="jetmail-subscribe" method="post" action="{action}" accept-charset="utf-8">\n'
        f"<h2>{title}</h2>{description}\n"
        f'<p><label for="jm-{pid}-email">Email</label>'
        f'<input id="jm-{pid}-email" name="email" type="email" required autocomplete="email"></p>\n'
        f'<p><label for="jm-{pid}-name">Name</label>'
        f'<input id="jm-{pid}-name" name="name" autocomplete="name"></p>\n'
        f"{fields}\n"
        # the honeypot: off screen and out of the tab order, so only a bot fills it
        f'<p style="position:absolute;left:-10000px" aria-hidden="true"><label for="jm-{pid}-{HONEYPOT}">'
        f'Leave this empty</label><input id="jm-{pid}-{HONEYPOT}" name="{HONEYPOT}" tabindex="-1" '
        f'autocomplete="off"></p>\n'
        f"{extra}"
        f'<p><button type="submit">Subscribe</button></p>\n</form>\n'
    )
