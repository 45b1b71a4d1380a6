"""What the audience is made of: contacts, lists, memberships and import reports, their validation and
their errors; no storage here (``jetmail.audience.contacts`` keeps them)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jetmail.audience.addresses import InvalidAddress, normalise_email
from jetmail.audience.fields import OneLine, TimeZone
from jetmail.storage import keys

SubscriptionStatus = Literal["subscribed", "unsubscribed", "pending"]
ImportFormat = Literal["csv", "jsonl"]
OptIn = Literal["double", "single"]
ConsentSource = Literal["form", "api", "import", "smtp", "preferences"]
STATUSES: tuple[str, ...] = get_args(SubscriptionStatus)

MAX_LISTS_PER_CONTACT = 50
MAX_ATTRIBUTES_BYTES = 8 * 1024
MAX_ATTRIBUTE_DEPTH = 4
MAX_REPORTED_ERRORS = 100
# lists are found by id without a request when the id cannot be one
LIST_ID = re.compile(r"^lst_[0-9a-f]{16}$")
# a list's id for subscribers (forms, the preference centre, the archive): random, never the internal id
PUBLIC_ID = re.compile(r"^pub_[A-Za-z0-9_-]{22}$")
MAX_FORM_FIELDS = 20
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
LANGUAGE = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
SNAPSHOT_FIELDS = ("email", "name", "language", "timezone", "attributes")


#: Above every address a range can name: U+10FFFF encodes as the highest UTF-8 sequence DynamoDB compares.
ADDRESS_TOP = "\U0010ffff"


@dataclass(slots=True)
class AddressRange:
    """Addresses (lower case, as memberships are keyed) in ``[lo, hi)``; ``hi`` None has no upper end.
    A plan part narrows ``hi`` as it hands the top of its range to another part: readers look at it again
    before every Query."""

    lo: str = ""
    hi: str | None = None

    def __contains__(self, key: str) -> bool:
        return self.lo <= key and (self.hi is None or key < self.hi)


class ListNotFound(LookupError):
    pass


class ContactNotFound(LookupError):
    pass


class UnknownList(ValueError):
    """A request names a list that does not exist."""


class InvalidContact(ValueError):
    """The contact would break a limit once merged with what is stored (attribute size, list count)."""


class ErasedAddress(ValueError):
    """The address was erased at its owner's request; it cannot become a contact again."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} was erased at its owner's request (GDPR) and cannot be added again")


class InvalidImport(ValueError):
    """The file as a whole cannot be read (no header, not UTF-8, a line too long); rows read before
    the problem stay imported."""


class ContactConflict(RuntimeError):
    """The contact kept changing under a write; the caller may retry."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# ---- validation
def _check_attribute_value(value: Any, *, depth: int, path: str) -> None:
    if isinstance(value, dict):
        if depth >= MAX_ATTRIBUTE_DEPTH:
            raise ValueError(f"{path}: nested more than {MAX_ATTRIBUTE_DEPTH} levels")
        for key, inner in value.items():
            if not isinstance(key, str) or not ATTRIBUTE_KEY.match(key):
                raise ValueError(f"{path}: key {key!r} must be 1-64 letters, digits, '_' or '-' (no dots)")
            _check_attribute_value(inner, depth=depth + 1, path=f"{path}.{key}")
    elif isinstance(value, list):
        if depth >= MAX_ATTRIBUTE_DEPTH:
            raise ValueError(f"{path}: nested more than {MAX_ATTRIBUTE_DEPTH} levels")
        for i, inner in enumerate(value):
            _check_attribute_value(inner, depth=depth + 1, path=f"{path}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: numbers must be finite")
    elif value is not None and not isinstance(value, str | int | bool):
        raise ValueError(f"{path}: unsupported value of type {type(value).__name__}")


def check_attributes(value: Mapping[str, Any]) -> None:
    """Keys addressable by segments (``attributes.a.b``), JSON values, bounded depth and size."""
    _check_attribute_value(dict(value), depth=0, path="attributes")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"attributes take {size} bytes as JSON; at most {MAX_ATTRIBUTES_BYTES} are allowed")


class ContactFields(BaseModel):
    """Profile fields of an upsert. A given field replaces the stored one (null clears it), an omitted
    one is kept; ``attributes`` merge key by key, and a key set to null is removed."""

    model_config = ConfigDict(extra="forbid")
    name: OneLine | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, max_length=35, pattern=LANGUAGE)
    timezone: TimeZone | None = Field(default=None, max_length=64, description="IANA time zone, e.g. Europe/Berlin")
    attributes: dict[str, Any] = Field(default_factory=dict, description="JSON object, at most 8 KiB")

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_attributes(value)
        return value


class ContactUpsert(ContactFields):
    """Body of ``PUT /v1/contacts/{email}``; ``lists`` sets the status in each named list and leaves the
    contact's other lists alone."""

    lists: dict[str, SubscriptionStatus] = Field(default_factory=dict, max_length=MAX_LISTS_PER_CONTACT)


class ImportRow(ContactFields):
    """One row of an import (a JSONL object, or a CSV row turned into one)."""

    email: str = Field(max_length=320)

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return normalise_email(value)
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None


class Consent(BaseModel):
    """How a contact came to be in one list: the proof of consent kept with the contact."""

    source: ConsentSource = Field(description="form, api, import, smtp or preferences")
    source_url: str | None = Field(default=None, description="the page the form was on (its Referer or "
                                                             "`source` field)")
    ip: str | None = Field(default=None, description="the requester's address as JETMAIL_CONSENT_IP keeps it: "
                                                     "`sha256:<16 hex>`, truncated, or in full")
    requested_at: str = Field(description="when the subscription was asked for (UTC, ISO 8601)")
    confirmed_at: str | None = Field(default=None, description="when it was confirmed; single opt-in: at once")
    opt_in: OptIn = "single"


class Contact(BaseModel):
    email: str
    name: str | None = None
    language: str | None = None
    timezone: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    lists: dict[str, SubscriptionStatus] = Field(default_factory=dict)
    consent: dict[str, Consent] = Field(default_factory=dict, description="list id -> how the contact joined it")
    last_opened_at: datetime | None = None
    last_clicked_at: datetime | None = None
    created_at: str
    updated_at: str


def _check_form_fields(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for key in value:
        if not ATTRIBUTE_KEY.match(key):
            raise ValueError(f"form field {key!r} must be 1-64 letters, digits, '_' or '-'")
        if key in ("email", "name", "source", "website", "pow"):
            raise ValueError(f"form field {key!r} is taken by the form itself")
    return list(dict.fromkeys(value))


class ListSettings(BaseModel):
    """What subscribers see of a list and how they join it."""

    model_config = ConfigDict(extra="forbid")
    public: bool = Field(default=False, description="offered on forms, the preference centre and the archive")
    title: OneLine | None = Field(default=None, max_length=200, description="the name subscribers see; "
                                                                           "unset: the list's name")
    description: str | None = Field(default=None, max_length=1000, description="what subscribers get")
    opt_in: OptIn = Field(default="double", description="double: a confirmation mail first; single: at once")
    form_fields: list[str] = Field(default_factory=list, max_length=MAX_FORM_FIELDS,
                                   description="contact attributes a public form may set")

    @field_validator("form_fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        return _check_form_fields(value) or []


class ListCreate(ListSettings):
    name: OneLine = Field(min_length=1, max_length=200)


class ListUpdate(BaseModel):
    """Body of ``PATCH /v1/lists/{id}``: given fields replace the stored ones."""

    model_config = ConfigDict(extra="forbid")
    name: OneLine | None = Field(default=None, min_length=1, max_length=200)
    public: bool | None = None
    title: OneLine | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    opt_in: OptIn | None = None
    form_fields: list[str] | None = Field(default=None, max_length=MAX_FORM_FIELDS)

    @field_validator("form_fields")
    @classmethod
    def _fields(cls, value: list[str] | None) -> list[str] | None:
        return _check_form_fields(value)


class MailingList(BaseModel):
    id: str
    name: str
    created_at: str
    public: bool = False
    public_id: str | None = Field(default=None, description="the list's id on forms and public pages")
    title: str | None = None
    description: str | None = None
    opt_in: OptIn = "double"
    form_fields: list[str] = Field(default_factory=list)

    @property
    def display_name(self) -> str:
        """The name subscribers see."""
        return self.title or self.name


class ListMember(BaseModel):
    email: str
    status: SubscriptionStatus
    name: str | None = None
    language: str | None = None
    timezone: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    updated_at: str


class MemberPage(BaseModel):
    members: list[ListMember]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page; "
                                                              "absent on the last page")


class RowError(BaseModel):
    row: int = Field(description="line number in the file (the CSV header is line 1)")
    message: str


class ImportReport(BaseModel):
    imported: int = 0
    failed: int = 0
    kept_unsubscribed: int = Field(default=0, description="rows imported whose contact had unsubscribed from "
                                                          "the list before: they stay unsubscribed")
    errors: list[RowError] = Field(default_factory=list, description=f"the first {MAX_REPORTED_ERRORS}")

    def fail(self, row: int, message: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(RowError(row=row, message=message))


@dataclass(frozen=True, slots=True)
class AudienceMember:
    """What sending needs of one recipient."""

    email: str
    name: str | None
    language: str | None
    timezone: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


def audience_member(item: Mapping[str, Any]) -> AudienceMember:
    """From a membership row or a contact item."""
    fields = member_fields(item) if "snap" in item else item
    return AudienceMember(email=fields["email"], name=fields.get("name"), language=fields.get("language"),
                          timezone=fields.get("timezone"), attributes=fields.get("attributes") or {})


def member_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """A membership row as plain fields: list id, status, email, name, language, time zone, attributes and
    ``updated_at``, unpacked from its snapshot (rows written before snapshots were packed keep them as
    attributes of their own)."""
    snap = item.get("snap")
    fields = json.loads(snap) if isinstance(snap, str) else {f: item.get(f) for f in (*SNAPSHOT_FIELDS, "updated_at")}
    fields.setdefault("attributes", {})
    return {**fields, "list_id": keys.list_id_of(item["pk"]), "status": item["status"]}


