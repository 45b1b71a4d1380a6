"""Transactional messages: accept a send request, record it, and hand it to the job layer.

A message record is written before its job is enqueued, and the job id *is* the message id, so
an API retry (same ``Idempotency-Key``) or a second enqueue can never produce a second send: the
job layer de-duplicates the id, and the worker's conditional claim refuses a finished message.

A message to a suppressed recipient is refused when it is accepted: recorded ``suppressed`` (with
why, in its history) and never enqueued. The worker checks again at send time, from the stop events
it follows (``jetmail.deliverability.policy``), so a stop made in between is honoured too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jetmail.audience.addresses import InvalidAddress, normalise_email
from jetmail.audience.fields import OneLine, TimeZone
from jetmail.messaging.templates import TemplateStore
from jetmail.messaging.templating import TemplateVersion
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table, item_fields
from jetmail.webhooks import DISABLED, WebhookSink, message_event

if TYPE_CHECKING:
    from jetmail.messaging.compose import Composer

TRANSACTIONAL_QUEUE = "email_transactional"
SEND_TASK = "send_message"
IDEMPOTENCY_TTL = timedelta(hours=24)
# what a message record keeps once its recipient is erased: nothing that names or describes the person
KEPT_AFTER_ERASURE = ("pk", "sk", "id", "status", "template", "language", "category", "created_at", "updated_at",
                      "send_at", "sent_at", "provider", "provider_message_id", "attempts", "campaign_id",
                      "sequence_id", "sequence_step", "expires_at")
ERASED = "[erased]"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"  # a campaign recipient its batch skipped (never a transactional message's)


# A message in one of these states is never sent again.
FINAL_BEFORE_SEND = {
    MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.COMPLAINED,
    MessageStatus.FAILED, MessageStatus.CANCELLED, MessageStatus.SUPPRESSED,
}


class SubmitCheck(Protocol):
    """The suppression policy at submit time (``jetmail.deliverability.policy.SuppressionPolicy``): why an
    address may not get this category of mail (``suppressed: <reason>``), or None."""

    def at_submit(self, email: str, *, category: str) -> str | None: ...

    def unlisted_checks(self, email: str) -> list[dict[str, Any]]: ...

    def at_submit_all(self, emails: Iterable[str], *, category: str) -> dict[str, str]: ...


class JobQueue(Protocol):
    """What the message domain needs from the job layer (implemented by ``jetmail.queue.SyncClient``)."""

    def enqueue(self, task: str, *, queue: str, priority: str = ..., job_id: str | None = ...,
                **kwargs: Any) -> Any: ...

    def enqueue_at(self, when: datetime, task: str, *, queue: str, priority: str = ...,
                   job_id: str | None = ..., **kwargs: Any) -> Any: ...

    def enqueue_many(self, task: str, payloads: Any, *, queue: str, priority: str = ...,
                     job_ids: Any = ..., max_retries: int = ...) -> Any: ...

    def cancel(self, job_id: str) -> bool: ...


class IdempotencyConflict(RuntimeError):
    """The idempotency key was used before with a different request body."""


class MessageNotFound(LookupError):
    pass


class InvalidMessage(InvalidAddress):
    """A send request jetmail cannot accept as it is; the message says why (answered 422, like an address)."""


class AttachmentsTooLarge(ValueError):
    """Attachments over ``JETMAIL_MAX_ATTACHMENT_BYTES`` (decoded) together; the API answers 413."""


class Blobs(Protocol):
    """Where a message's attachments wait for the worker (``jetmail.messaging.submission.BlockingRawStore``)."""

    def put(self, ref: str, data: bytes) -> None: ...


def attachments_ref(message_id: str) -> str:
    """The attachments blob of a message in the raw store: one object per message."""
    return message_id.replace("msg_", "att_", 1)


def encode_attachments(attachments: list[AttachmentIn]) -> bytes:
    """The blob the worker reads back with ``decode_attachments``: the request's own items as JSON."""
    return json.dumps([a.model_dump() for a in attachments], separators=(",", ":")).encode()


def decode_attachments(blob: bytes) -> list[AttachmentIn]:
    return [AttachmentIn.model_validate(a) for a in json.loads(blob)]


def inline_version(*, subject: str, html: str | None, text: str | None, locale: str | None) -> TemplateVersion:
    """Inline content as a one-off template version: named after its content's hash, so the renderer's
    cache keeps one compiled copy per distinct content. Text-only content gets a placeholder HTML body
    that is rendered and dropped (``text_only``)."""
    from jetmail.messaging.templating import TemplateVersion, normalize_locale

    digest = hashlib.sha256(json.dumps([subject, html, text]).encode()).hexdigest()[:20]
    return TemplateVersion(name=f"inline-{digest}", locale=normalize_locale(locale or "en"), version=1,
                           subject=subject, html=html if html is not None else TEXT_ONLY_HTML, text=text)


TEXT_ONLY_HTML = "<p></p>"


def new_message_id() -> str:
    # time-ordered prefix keeps ids sortable by creation; 64 random bits keep them unguessable
    return f"msg_{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


MAX_RECIPIENTS = 50
MAX_TAGS = 10
MAX_METADATA_KEYS = 20
MAX_METADATA_BYTES = 2048
#: inline subject, HTML and text together, as kept in the message record (DynamoDB items stop at 400 KB)
MAX_INLINE_BYTES = 256 * 1024
MAX_ATTACHMENTS = 20
MAX_FILENAME = 150
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
METADATA_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}$")
# files a mail client may run when opened: refused by extension and by content type
DANGEROUS_EXTENSIONS = frozenset(
    "exe bat cmd com js jse vbs vbe scr jar msi msp ps1 psm1 sh bash csh ksh pif cpl hta wsf wsh lnk reg dll "
    "app apk dmg scf inf".split())
DANGEROUS_TYPES = frozenset(
    ("application/x-msdownload application/x-msdos-program application/x-ms-installer application/x-msi "
     "application/x-dosexec application/x-executable application/vnd.microsoft.portable-executable "
     "application/x-sh application/x-csh application/x-bat application/x-ms-shortcut application/hta "
     "application/javascript application/x-javascript text/javascript application/ecmascript text/ecmascript "
     "text/vbscript application/x-vbscript application/java-archive application/x-java-archive "
     "application/x-powershell application/x-apple-diskimage application/vnd.android.package-archive").split())
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def sanitise_filename(value: str) -> str:
    """The last path component of ``value`` without control characters or leading dots, at most
    ``MAX_FILENAME`` characters (the extension kept); ValueError when nothing is left."""
    name = _CONTROL.sub("", value).replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:MAX_FILENAME - len(ext) - 1] + "." + ext) if dot and len(ext) <= 16 else name[:MAX_FILENAME]
    if not name:
        raise ValueError("filename is empty once path parts and control characters are removed")
    return name


class AttachmentIn(BaseModel):
    """One file of ``attachments``: base64 ``content``; with ``content_id`` an inline image the HTML shows
    as ``<img src="cid:...">``."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=1024)
    content: str = Field(min_length=1, description="the file, base64 (RFC 4648, standard alphabet)")
    content_type: str = Field(min_length=3, max_length=127,
                              pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
    content_id: str | None = Field(default=None, min_length=1, max_length=100,
                                   pattern=r"^[A-Za-z0-9][A-Za-z0-9._%+-]*(@[A-Za-z0-9][A-Za-z0-9.-]*)?$")

    @field_validator("filename")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        name = sanitise_filename(value)
        extension = name.rstrip(". ").rpartition(".")[2].lower()
        if "." in name and extension in DANGEROUS_EXTENSIONS:
            raise ValueError(f"{name!r}: .{extension} files are refused (executables and scripts)")
        return name

    @field_validator("content_type")
    @classmethod
    def _safe_type(cls, value: str) -> str:
        value = value.lower()
        if value in DANGEROUS_TYPES:
            raise ValueError(f"{value} attachments are refused (executables and scripts)")
        return value

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("content is not valid base64 (standard alphabet, padded)") from None
        return value

    def data(self) -> bytes:
        return base64.b64decode(self.content)

    @property
    def size(self) -> int:
        """Decoded bytes, without decoding."""
        return len(self.content) * 3 // 4 - self.content[-2:].count("=")


class SendRequest(BaseModel):
    """Body of ``POST /v1/messages``: a stored ``template``, or inline ``subject`` with ``html`` and/or
    ``text`` (Jinja sources, rendered and checked like a stored template)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    template: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    subject: str | None = Field(default=None, min_length=1, max_length=998, description="inline subject (Jinja)")
    html: str | None = Field(default=None, min_length=1, max_length=MAX_INLINE_BYTES,
                             description="inline HTML body (Jinja)")
    text: str | None = Field(default=None, min_length=1, max_length=MAX_INLINE_BYTES,
                             description="inline text body (Jinja); derived from html when absent")
    to: str = Field(min_length=3, max_length=320, description="recipient address")
    name: OneLine | None = Field(default=None, max_length=200, description="recipient display name")
    cc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS - 1,
                          description="copied recipients (Cc header and envelope)")
    bcc: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS - 1,
                           description="blind copies: envelope only, never in a header")
    context: dict[str, Any] = Field(default_factory=dict, description="template variables")
    language: str | None = Field(default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    timezone: TimeZone | None = Field(default=None, max_length=64)
    send_at: datetime | None = Field(default=None, description="deliver at this time (RFC 3339) instead of now")
    from_: OneLine | None = Field(default=None, alias="from", max_length=320)
    reply_to: OneLine | None = Field(default=None, max_length=320)
    headers: dict[str, str] = Field(default_factory=dict, description="extra header fields; jetmail's own refused")
    metadata: dict[str, str] = Field(default_factory=dict, description="your keys and values, echoed in the "
                                                                       "message and its webhooks")
    tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] = Field(default_factory=list, max_length=MAX_TAGS)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @field_validator("to")
    @classmethod
    def _valid_to(cls, value: str) -> str:
        try:
            return normalise_email(value)
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None

    @field_validator("cc", "bcc")
    @classmethod
    def _valid_copies(cls, value: list[str]) -> list[str]:
        out = []
        for address in value:
            try:
                out.append(normalise_email(address))
            except InvalidAddress as exc:
                raise ValueError(f"{address[:80]!r}: {exc}") from None
        return out

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("send_at needs a time zone offset, e.g. 2026-12-01T09:00:00Z")
        return value

    @field_validator("reply_to")
    @classmethod
    def _one_reply_to(cls, value: str | None) -> str | None:
        # the worker builds the Reply-To header from exactly one mailbox; refuse here what it would refuse
        if value is None:
            return None
        from jetmail.messaging.mime import parse_address

        try:
            parse_address(value)
        except ValueError as exc:
            raise ValueError(f"must be one address (\"Name <addr>\" or addr): {exc}") from None
        return value

    @field_validator("context")
    @classmethod
    def _sendable_context(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_context(value)
        return value

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, value: dict[str, str]) -> dict[str, str]:
        from jetmail.messaging.mime import check_custom_headers

        check_custom_headers(value)
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"{len(value)} keys; at most {MAX_METADATA_KEYS}")
        for key in value:
            if not METADATA_KEY.match(key):
                raise ValueError(f"key {key[:50]!r}: 1-40 of A-Z a-z 0-9 _ . : -, starting with a letter or digit")
        _check_text(value, "metadata")
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"over {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _one_content(self) -> SendRequest:
        inline = self.subject is not None or self.html is not None or self.text is not None
        if self.template is not None and inline:
            raise ValueError("give either template or inline content (subject with html and/or text), not both")
        if self.template is None:
            if not inline:
                raise ValueError("give a template, or inline content: subject with html and/or text")
            if self.subject is None or (self.html is None and self.text is None):
                raise ValueError("inline content needs a subject and html and/or text")
            _check_text([self.subject, self.html, self.text], "inline content")
            size = sum(len(v.encode("utf-8")) for v in (self.subject, self.html, self.text) if v)
            if size > MAX_INLINE_BYTES:
                raise ValueError(f"inline subject, html and text are over {MAX_INLINE_BYTES} bytes together; "
                                 "save larger content as a template")
        # one copy per address, the first role kept: to, then cc, then bcc
        seen = {self.to.lower()}
        for role in ("cc", "bcc"):
            kept = []
            for address in getattr(self, role):
                if address.lower() not in seen:
                    seen.add(address.lower())
                    kept.append(address)
            setattr(self, role, kept)
        if len(seen) > MAX_RECIPIENTS:
            raise ValueError(f"{len(seen)} recipients in to, cc and bcc; at most {MAX_RECIPIENTS}")
        if any(a.content_id for a in self.attachments) and self.html is None and self.template is None:
            raise ValueError("inline attachments (content_id) need html to show them")
        ids = [a.content_id for a in self.attachments if a.content_id]
        if len(ids) != len(set(ids)):
            raise ValueError("content_id values must be unique")
        return self

    @property
    def attachment_bytes(self) -> int:
        return sum(a.size for a in self.attachments)


def check_context(context: dict[str, Any]) -> None:
    """Raise ValueError for a template context the renderer would refuse at send time: a key that shadows a
    standard name (``unsubscribe_url``...), or text that is not valid Unicode (a lone surrogate such as
    ``\\ud800``, which JSON can carry but UTF-8 cannot)."""
    from jetmail.messaging.templating import STANDARD_NAMES

    reserved = sorted(STANDARD_NAMES.intersection(context))
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: reserved for jetmail's own values; use another key")
    _check_text(context, "context")


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where} holds text that is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if isinstance(key, str) and key.isprintable() else where)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_text(item, where)


class HistoryEntry(BaseModel):
    status: MessageStatus
    at: str
    detail: str | None = None


class AttachmentSummary(BaseModel):
    filename: str
    content_type: str
    size: int
    content_id: str | None = None


class DroppedRecipient(BaseModel):
    address: str
    role: str
    reason: str


class MessagePublic(BaseModel):
    id: str
    status: MessageStatus
    to: str
    template: str | None = None
    language: str | None = None
    category: str = "transactional"
    created_at: str
    send_at: str | None = None
    sent_at: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    attempts: int = 0
    campaign_id: str | None = None
    sequence_id: str | None = None
    # "raw": complete MIME from the SMTP submission server (no template); None: rendered from a template
    kind: str | None = None
    subject: str | None = Field(default=None, description="inline messages: the subject as given (Jinja)")
    cc: list[str] | None = None
    bcc: list[str] | None = None
    reply_to: str | None = None
    headers: dict[str, str] | None = None
    attachments: list[AttachmentSummary] | None = None
    suppressed_recipients: list[DroppedRecipient] | None = Field(
        default=None, description="cc and bcc addresses dropped as suppressed, with why")
    tags: list[str] | None = None
    metadata: dict[str, str] | None = None
    history: list[HistoryEntry] = Field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def request_hash(request: BaseModel) -> str:
    """What an Idempotency-Key's body is compared by: a digest of the request as validated."""
    canonical = json.dumps(request.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


COPY_FIELDS = ("cc", "bcc", "suppressed_recipients")  # where a message record names its copied addresses


def copied_addresses(record: dict[str, Any]) -> list[str]:
    """The cc and bcc addresses of a message record, lower-cased, those dropped as suppressed included."""
    found = [*(record.get("cc") or ()), *(record.get("bcc") or ()),
             *(d["address"] for d in record.get("suppressed_recipients") or ())]
    return list(dict.fromkeys(a.lower() for a in found if a.lower() != str(record.get("to", "")).lower()))


class MessageRepository:
    """Message records: one item each, one GetItem to read, one conditional UpdateItem per transition."""

    def __init__(self, table: Table, *, retention_days: int = 400) -> None:
        self.table = table
        self.retention = timedelta(days=retention_days)

    def record(self, message_id: str, *, request: SendRequest, status: MessageStatus, category: str = "transactional",
               extra: dict[str, Any] | None = None, detail: str | None = None,
               dropped: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """The item of a new message; the optional parts (inline content, copies, headers, attachments' names,
        metadata, tags) only when given, so a plain template send stays small."""
        created = now_iso()
        dropped_addresses = {d["address"] for d in dropped or []}
        optional: dict[str, Any] = {
            "subject": request.subject,
            "inline": ({k: v for k, v in (("subject", request.subject), ("html", request.html),
                                          ("text", request.text)) if v is not None}
                       if request.template is None else None),
            "cc": [a for a in request.cc if a not in dropped_addresses],
            "bcc": [a for a in request.bcc if a not in dropped_addresses],
            "headers": request.headers,
            "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                             **({"content_id": a.content_id} if a.content_id else {})}
                            for a in request.attachments],
            "suppressed_recipients": dropped,
            "metadata": request.metadata,
            "tags": request.tags,
        }
        return {
            **keys.message(message_id).item(),
            "gsi1pk": keys.recipient(request.to.lower()),
            "gsi1sk": keys.by_recipient(keys.MESSAGE_PREFIX, created),
            "id": message_id,
            "status": status.value,
            "to": request.to,
            "to_name": request.name,
            "template": request.template,
            "language": request.language,
            "timezone": request.timezone,
            "context": json.dumps(request.context),
            "from_addr": request.from_,
            "reply_to": request.reply_to,
            "category": category,
            "created_at": created,
            "send_at": request.send_at.astimezone(UTC).isoformat() if request.send_at else None,
            "attempts": 0,
            "history": [{"status": status.value, "at": created, **({"detail": detail} if detail else {})}],
            "expires_at": int(time.time() + self.retention.total_seconds()),
            **{k: v for k, v in optional.items() if v},
            **(extra or {}),
        }

    def raw_record(self, message_id: str, *, to: str, submission: RawSubmission,
                   refused: str | None = None) -> dict[str, Any]:
        """A message of complete MIME (``kind: raw``): the body waits in the raw store under ``raw_ref``.
        ``refused``: the recipient is suppressed, and the message is recorded ``suppressed`` with why."""
        created = now_iso()
        status = MessageStatus.SUPPRESSED if refused else MessageStatus.QUEUED
        return {
            **keys.message(message_id).item(), "gsi1pk": keys.recipient(to.lower()),
            "gsi1sk": keys.by_recipient(keys.MESSAGE_PREFIX, created),
            "id": message_id, "status": status.value, "kind": "raw", "to": to,
            "raw_ref": submission.raw_ref, "from_addr": submission.mail_from, "category": submission.category,
            "track": submission.track, "tags": submission.tags or None, "metadata": submission.metadata or None,
            "api_key_id": submission.api_key_id, "created_at": created, "attempts": 0,
            "history": [{"status": status.value, "at": created, "detail": refused or "submitted over SMTP"}],
            "expires_at": int(time.time() + self.retention.total_seconds()),
        }

    def index_rows(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The message log's rows of a new message: one in its day's partition, one per tag, one per copied
        address (``copied_addresses``, for export and erasure); each names the message and expires with it.
        Written with the message, never changed after (status lives on the message alone)."""
        created, message_id = record["created_at"], record["id"]
        partitions = [keys.message_day_partition(created[:10]),
                      *(keys.message_tag_partition(tag) for tag in record.get("tags") or ()),
                      *(keys.message_copy_partition(a) for a in copied_addresses(record))]
        return [keys.message_index(partition, created, message_id).item(id=message_id,
                                                                        expires_at=record["expires_at"])
                for partition in partitions]

    def create_ops(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The TransactWriteItems operations that create a message: its item (conditional on being new) and
        its index rows (``index_rows``); the transaction fails as a whole when the message exists."""
        return [self.table.put_op(record, condition="attribute_not_exists(pk)"),
                *(self.table.put_op(row) for row in self.index_rows(record))]

    def create(self, record: dict[str, Any], *, checks: Sequence[dict[str, Any]] = ()) -> bool:
        """Write a new message with its index rows: one TransactWriteItems of 2 + tags + copies items (twice their
        write units, as every transaction). ConditionFailed when the message exists. With ``checks``
        (ConditionCheck operations, ``SubmitCheck.unlisted_checks``) the write is conditional on them too:
        False, and nothing written, when one of them fails."""
        ops = self.create_ops(record)
        try:
            self.table.transact([*ops, *checks])
        except ConditionFailed as exc:
            if any(i >= len(ops) for i in exc.failed):
                return False
            raise
        return True

    def page_of_recipient(self, address: str, *, since: str | None, until: str | None,
                          filter: str | None, names: dict[str, str], params: dict[str, Any], limit: int,
                          start: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One Query of gsi1 in ``address``'s partition, newest first, between two creation times, reading at
        most ``limit`` items and keeping those ``filter`` (a FilterExpression on the message) lets through."""
        low = keys.by_recipient(keys.MESSAGE_PREFIX, since or "")
        high = keys.by_recipient(keys.MESSAGE_PREFIX, (until or "9999") + "~")
        return self.table.query(pk=keys.recipient(address.lower()), index="gsi1", sk_between=(low, high),
                                forward=False, limit=limit, start=start, filter=filter, names=names, params=params)

    def page_of_index(self, partition: str, *, since: str | None, until: str | None, limit: int,
                      start: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One Query of a tag's or a day's index rows (``keys.message_tag_partition`` /
        ``message_day_partition``), newest first, at most ``limit`` rows, then one BatchGetItem of their
        messages; returns the messages in the rows' order (a message gone meanwhile left out)."""
        rows, start = self.table.query(pk=partition, sk_between=(since or "0", (until or "9999") + "~"),
                                       forward=False, limit=limit, start=start)
        found = {i["id"]: i for i in self.table.batch_get([keys.message(r["id"]) for r in rows])} if rows else {}
        return [found[r["id"]] for r in rows if r["id"] in found], start

    def get(self, message_id: str) -> dict[str, Any]:
        """One consistent GetItem; raises MessageNotFound."""
        item = self.find(message_id, consistent=True)
        if item is None:
            raise MessageNotFound(message_id)
        return item

    def find(self, message_id: str, *, consistent: bool = False) -> dict[str, Any] | None:
        """One GetItem."""
        return self.table.get(*keys.message(message_id), consistent=consistent)

    def for_recipient(self, address: str) -> Iterator[dict[str, Any]]:
        """Every message record to ``address`` (any case), lazily: one Query of gsi1 per ~1 MB page."""
        return self.table.query_all(pk=keys.recipient(address.lower()), sk_prefix=keys.MESSAGE_PREFIX, index="gsi1")

    def export_of(self, address: str) -> list[dict[str, Any]]:
        """The message records to ``address`` as held (without keys and expiry), the template context
        decoded: ``for_recipient``'s cost."""
        records = []
        for item in self.for_recipient(address):
            record = item_fields(item)
            if isinstance(record.get("context"), str):
                record["context"] = json.loads(record["context"])
            records.append(record)
        return records

    def strip_personal(self, address: str) -> int:
        """Rewrite every message record to ``address`` without what names or describes the person
        (recipient, name, context, From, errors; status and times stay for the totals); returns how many.
        ``for_recipient``'s cost and one conditional PutItem per record (a record gone meanwhile is left
        gone)."""
        stripped = 0
        for item in self.for_recipient(address):
            kept = {k: item[k] for k in KEPT_AFTER_ERASURE if item.get(k) is not None}
            kept["to"] = ERASED
            kept["history"] = [{"status": h.get("status"), "at": h.get("at")} for h in item.get("history") or []
                               if isinstance(h, dict)]
            try:
                self.table.put(kept, condition="attribute_exists(pk)")
            except ConditionFailed:
                continue
            stripped += 1
        return stripped

    # ---- messages that copied an address (cc, bcc): found by their copy rows (index_rows), never by a scan
    def _copy_rows(self, address: str) -> list[dict[str, Any]]:
        """One Query per ~1 MB page."""
        return list(self.table.query_all(pk=keys.message_copy_partition(address)))

    def _copied(self, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The message records the rows name (one BatchGetItem per 100); a message gone meanwhile is skipped."""
        yield from self.table.batch_get([keys.message(r["id"]) for r in rows]) if rows else ()

    def copies_export_of(self, address: str) -> list[dict[str, Any]]:
        """The records of the messages that copied ``address`` as held, the context decoded, showing of the bcc
        and dropped addresses only this one (another blind copy is not this person's data)."""
        records = []
        for item in self._copied(self._copy_rows(address)):
            record = item_fields(item)
            if isinstance(record.get("context"), str):
                record["context"] = json.loads(record["context"])
            if record.get("bcc"):
                record["bcc"] = [a for a in record["bcc"] if a.lower() == address]
            if record.get("suppressed_recipients"):
                record["suppressed_recipients"] = [d for d in record["suppressed_recipients"]
                                                   if str(d.get("address", "")).lower() == address]
            records.append(record)
        return records

    def strip_copies(self, address: str) -> int:
        """Take ``address`` out of every message that copied it, then delete the rows that found them;
        returns how many messages named it. One conditional UpdateItem per message (the lists alone, so a
        status the worker writes meanwhile stays) and one BatchWriteItem per 25 rows."""
        rows = self._copy_rows(address)
        stripped = 0
        for item in self._copied(rows):
            kept = {f: [v for v in item[f] if str(v.get("address", "") if isinstance(v, dict) else v).lower()
                        != address] for f in COPY_FIELDS if item.get(f)}
            if kept == {f: item[f] for f in kept}:
                continue  # already taken out (a repeated erasure, or the message's own recipient erased)
            sets = [f"#{f} = :{f}" for f, v in kept.items() if v]
            removes = [f"#{f}" for f, v in kept.items() if not v]
            expression = " ".join(part for part in (f"SET {', '.join(sets)}" if sets else "",
                                                   f"REMOVE {', '.join(removes)}" if removes else "") if part)
            try:
                self.table.update(item["pk"], item["sk"], expression=expression,
                                           names={f"#{f}": f for f in kept},
                                           params={f":{f}": v for f, v in kept.items() if v} or None,
                                           condition="attribute_exists(pk)")
            except ConditionFailed:
                continue
            stripped += 1
        self.table.batch_delete([(r["pk"], r["sk"]) for r in rows])
        return stripped

    def transition(self, message_id: str, status: MessageStatus, *, allowed_from: set[MessageStatus],
                   detail: str | None = None, fields: dict[str, Any] | None = None,
                   count_attempt: bool = False) -> dict[str, Any]:
        """Move a message to ``status`` if it is in one of ``allowed_from``, returning the item as it is now;
        ConditionFailed otherwise (the message is in another state, or missing)."""
        return self.table.update(*keys.message(message_id), **_transition(status, allowed_from=allowed_from,
                                                                          detail=detail, fields=fields,
                                                                          count_attempt=count_attempt))

    def transition_op(self, message_id: str, status: MessageStatus, *, allowed_from: set[MessageStatus],
                      detail: str | None = None, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """The same transition as one TransactWriteItems operation, to ride with other writes (the send
        counters) in one request; the transaction fails as a whole when the message is not in ``allowed_from``."""
        return self.table.update_op(*keys.message(message_id), **_transition(status, allowed_from=allowed_from,
                                                                             detail=detail, fields=fields))


def _transition(status: MessageStatus, *, allowed_from: set[MessageStatus], detail: str | None,
                fields: dict[str, Any] | None, count_attempt: bool = False) -> dict[str, Any]:
    """The conditional update of a transition: status, a history entry, ``fields``, the attempt counted."""
    at = now_iso()
    sets = ["#s = :s", "updated_at = :at", "history = list_append(history, :h)"]
    params: dict[str, Any] = {":s": status.value, ":at": at,
                              ":h": [{"status": status.value, "at": at, "detail": detail}]}
    names = {"#s": "status"}
    for i, (key, value) in enumerate((fields or {}).items()):
        names[f"#f{i}"] = key
        params[f":f{i}"] = value
        sets.append(f"#f{i} = :f{i}")
    expression = "SET " + ", ".join(sets)
    if count_attempt:
        expression += " ADD attempts :one"
        params[":one"] = 1
    placeholders = []
    for i, value in enumerate(sorted(s.value for s in allowed_from)):
        params[f":a{i}"] = value
        placeholders.append(f":a{i}")
    return {"expression": expression, "names": names, "params": params,
            "condition": f"#s IN ({', '.join(placeholders)})"}


def public(item: dict[str, Any]) -> MessagePublic:
    return MessagePublic.model_validate(
        {**item, "history": [h for h in item.get("history", []) if isinstance(h, dict)]}
    )


class MessageService:
    """The submit side of transactional mail (API, CLI, sequences)."""

    webhooks: WebhookSink = DISABLED  # Services sets its emitter: ``message.queued`` per accepted message

    def __init__(self, *, table: Table, templates: TemplateStore, queue: JobQueue,
                 repository: MessageRepository | None = None, composer: Composer | None = None,
                 policy: SubmitCheck | None = None, blobs: Blobs | None = None,
                 max_attachment_bytes: int = 10 * 1024 * 1024, blob_ttl_s: float = 72 * 3600) -> None:
        self.table = table
        self.templates = templates
        self.queue = queue
        self.messages = repository or MessageRepository(table)
        # checks the From address and, for marketing templates, the bulk-sender rules
        self.composer = composer
        # refuses suppressed recipients when a message is accepted; None: the worker alone decides
        self.policy = policy
        # attachments wait here for the worker, ``blob_ttl_s`` seconds; None: attachments are refused
        self.blobs = blobs
        self.max_attachment_bytes = max_attachment_bytes
        self.blob_ttl_s = blob_ttl_s

    def check(self, request: SendRequest) -> TemplateVersion:
        """What :meth:`submit` refuses, without recording anything; returns the version that will be sent."""
        self.check_attachments(request)
        if request.template is not None:
            template = self.templates.resolve(request.template, request.language)
        else:
            template = self.check_inline(request)
        if self.composer is not None:
            self.composer.check_from(request.from_)
            # rendered with this request's context alone, as the worker will: a missing variable is the
            # sender's error now, not a failed message later
            self.composer.require_sendable(template, dict(request.context), to=request.to, name=request.name,
                                          language=request.language, timezone=request.timezone)
        return template

    def submit(self, request: SendRequest, *, api_key_id: str | None = None, idempotency_key: str | None = None,
               extra: dict[str, Any] | None = None) -> tuple[MessagePublic, bool]:
        """Record and enqueue one message; returns (message, created). Raises TemplateNotFound,
        TemplateValidationError (inline content the checks refuse), IdempotencyConflict, SenderNotAllowed,
        TemplateRenderError (the template does not render with this context, as a variable it lacks),
        NotCompliant (a marketing template without an unsubscribe link or postal address), InvalidMessage
        and AttachmentsTooLarge. A suppressed ``to`` makes the message ``suppressed``, not enqueued; a
        suppressed cc or bcc address is dropped and listed in ``suppressed_recipients``. Costs the template
        head (cached), the idempotency writes, one TransactWriteItems (the message and its message-log index
        rows; for a message to one address, also the check that the address is on no suppression list), and
        for attachments one object-store put; with cc or bcc, one suppression read per 100 addresses before,
        and for a listed address one read after."""
        template = self.check(request)
        category = template.category or "transactional"
        refused: str | None = None
        dropped: list[dict[str, str]] = []
        checks: list[dict[str, Any]] = []
        if self.policy is not None:
            copies = [*request.cc, *request.bcc]
            if copies:
                found = self.policy.at_submit_all([request.to, *copies], category=category)
                refused = found.get(request.to)
                dropped = [{"address": a, "role": role, "reason": found[a]}
                           for role in ("cc", "bcc") for a in getattr(request, role) if a in found]
            else:
                # no read: the message's own write holds while the address is on no suppression list
                checks = self.policy.unlisted_checks(request.to)
        message_id = new_message_id()
        due = request.send_at is not None and request.send_at > datetime.now(UTC)
        status = MessageStatus.SUPPRESSED if refused else MessageStatus.SCHEDULED if due else MessageStatus.QUEUED
        record = self.messages.record(message_id, request=request, status=status, category=category, extra=extra,
                                      detail=refused, dropped=dropped or None)
        if idempotency_key:
            # two plain conditional writes, no transaction: the key is claimed first, and a retry that
            # finds the key without its message (the first attempt died in between) completes it
            idem = keys.idempotency(api_key_id, hashlib.sha256(idempotency_key.encode()).hexdigest())
            body_hash = request_hash(request)
            try:
                self.table.put(idem.item(message_id=message_id, body_hash=body_hash,
                                         expires_at=int(time.time() + IDEMPOTENCY_TTL.total_seconds())),
                               condition="attribute_not_exists(pk) OR expires_at < :now",
                               params={":now": int(time.time())})
            except ConditionFailed:
                existing = self.table.get(*idem, consistent=True)
                if existing is None:  # expired between the two reads: treat as new
                    return self.submit(request, api_key_id=api_key_id, idempotency_key=idempotency_key, extra=extra)
                if existing["message_id"] == message_id:  # our own claim, repeated by the SDK after a lost reply
                    return self._create(record, request, checks), True
                if existing["body_hash"] != body_hash:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request body"
                    ) from None
                try:
                    item = self.messages.get(existing["message_id"])
                except MessageNotFound:
                    record = {**record, "pk": keys.message(existing["message_id"]).pk, "id": existing["message_id"]}
                    if request.attachments:
                        assert self.blobs is not None
                        self.blobs.put(attachments_ref(record["id"]), encode_attachments(request.attachments))
                    try:
                        self._write(record, checks)
                    except ConditionFailed:
                        pass  # a concurrent retry completed it
                    item = self.messages.get(existing["message_id"])
                if item["status"] in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
                    # the first attempt may have died before enqueueing; the job id de-duplicates
                    self._enqueue(item["id"], request)
                return public(item), False
        return self._create(record, request, checks), True

    def check_inline(self, request: SendRequest) -> TemplateVersion:
        """Inline content as a template version, through the checks a stored template passes on save
        (sandbox, markup safety, a test render under the render limits); raises TemplateValidationError."""
        from jetmail.messaging.templating import RenderLimits, check_template

        assert request.subject is not None
        version = inline_version(subject=request.subject, html=request.html, text=request.text,
                                 locale=request.language)
        limits = self.composer.renderer.limits if self.composer is not None else RenderLimits()
        check_template(version, limits=limits, layouts=getattr(self.templates, "layout", None))
        return version

    def check_attachments(self, request: SendRequest) -> None:
        """Raise AttachmentsTooLarge past the size cap, InvalidMessage when attachments cannot be kept
        until the message is due."""
        if not request.attachments:
            return
        size = request.attachment_bytes
        if size > self.max_attachment_bytes:
            raise AttachmentsTooLarge(f"attachments are {size} bytes decoded; at most {self.max_attachment_bytes} "
                                      "(JETMAIL_MAX_ATTACHMENT_BYTES)")
        if self.blobs is None:
            raise InvalidMessage("attachments are not available here: no attachment store is configured")
        if request.send_at is not None:
            latest = datetime.now(UTC) + timedelta(seconds=self.blob_ttl_s) - timedelta(hours=1)
            if request.send_at > latest:
                raise InvalidMessage(f"attachments are kept {self.blob_ttl_s / 3600:g} hours "
                                     "(JETMAIL_SUBMISSION_RETENTION_HOURS); send_at must be within that, "
                                     "less an hour")

    def _write(self, record: dict[str, Any], checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Create the message, with ``checks`` in its transaction when the submit-time suppression check is left
        to them; when one fails the address has an entry, and ``at_submit`` says whether it refuses this
        message (recorded ``suppressed``, with why) or not (recorded as it was). Returns the record written;
        ConditionFailed when the message exists."""
        if self.messages.create(record, checks=checks):
            return record
        assert self.policy is not None
        refused = self.policy.at_submit(record["to"], category=record["category"])
        if refused:
            status = MessageStatus.SUPPRESSED.value
            record = {**record, "status": status,
                      "history": [{"status": status, "at": record["created_at"], "detail": refused}]}
        self.messages.create(record)
        return record

    def _create(self, record: dict[str, Any], request: SendRequest,
                checks: Sequence[dict[str, Any]] = ()) -> MessagePublic:
        if request.attachments and record["status"] != MessageStatus.SUPPRESSED:
            # before the record: a worker that finds the record finds its attachments (a message refused by
            # its ``checks`` leaves them to the store's TTL)
            assert self.blobs is not None
            self.blobs.put(attachments_ref(record["id"]), encode_attachments(request.attachments))
        try:
            record = self._write(record, checks)
        except ConditionFailed:
            # the id was made by this call, so the item can only be our own write: the SDK repeated a
            # transaction whose reply was lost (a timeout after DynamoDB applied it)
            pass
        if record["status"] != MessageStatus.SUPPRESSED:
            self._enqueue(record["id"], request)
            self.webhooks.emit([message_event("message.queued", record, at=record.get("created_at"))])
        return public(record)

    def _enqueue(self, message_id: str, request: SendRequest) -> None:
        if request.send_at is not None and request.send_at > datetime.now(UTC):
            self.queue.enqueue_at(request.send_at, SEND_TASK, queue=TRANSACTIONAL_QUEUE, priority="high",
                                  job_id=message_id, message_id=message_id, max_retries=5)
        else:
            self.queue.enqueue(SEND_TASK, queue=TRANSACTIONAL_QUEUE, priority="high", job_id=message_id,
                               message_id=message_id, max_retries=5)

    def submit_raw(self, submission: RawSubmission) -> list[str]:
        """Record and enqueue one message per envelope recipient of a complete MIME message (the SMTP
        submission server); returns their ids, in recipient order. One suppression check, one batch write
        per 25 rows (each message with its message-log index rows), one batched publish, one webhook emit; a
        suppressed recipient's message is recorded ``suppressed`` and not enqueued."""
        refused = (self.policy.at_submit_all(submission.recipients, category=submission.category)
                   if self.policy is not None else {})
        records = [self.messages.raw_record(message_id, to=to, submission=submission, refused=refused.get(to))
                   for message_id, to in zip(submission.message_ids, submission.recipients, strict=True)]
        self.table.batch_put([*records, *(row for r in records for row in self.messages.index_rows(r))])
        due = [r["id"] for r in records if r["status"] == MessageStatus.QUEUED]
        if due:
            self.queue.enqueue_many(SEND_TASK, [{"message_id": i} for i in due], queue=TRANSACTIONAL_QUEUE,
                                    priority="high", job_ids=due, max_retries=5)
            self.webhooks.emit([message_event("message.queued", r, at=r.get("created_at"))
                                for r in records if r["status"] == MessageStatus.QUEUED])
        return [r["id"] for r in records]

    def get(self, message_id: str) -> MessagePublic:
        return public(self.messages.get(message_id))


@dataclass(frozen=True, slots=True)
class RawSubmission:
    """A complete MIME message accepted for ``recipients`` (one message id each), its body in the raw store."""

    message_ids: list[str]
    recipients: list[str]
    mail_from: str
    raw_ref: str
    category: str = "transactional"
    track: bool = False
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    api_key_id: str | None = None
