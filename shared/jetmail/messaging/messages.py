"""Transactional messages: accept a send request, record it, and hand it to the job layer.

A message record is written before its job is enqueued, and the job id *is* the message id, so
an API retry (same ``Idempotency-Key``) or a second enqueue can never produce a second send: the
job layer de-duplicates the id, and the worker's conditional claim refuses a finished message.

A message to a suppressed recipient is refused when it is accepted: recorded ``suppressed`` (with
why, in its history) and never enqueued. The worker checks again at send time, from the stop events
it follows (``jetmail.deliverability.policy``), so a stop made in between is honoured too.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jetmail.audience.addresses import InvalidAddress, normalise_email
from jetmail.audience.fields import OneLine, TimeZone
from jetmail.messaging.templates import TemplateStore
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table, item_fields

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


# A message in one of these states is never sent again.
FINAL_BEFORE_SEND = {
    MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.BOUNCED, MessageStatus.COMPLAINED,
    MessageStatus.FAILED, MessageStatus.CANCELLED, MessageStatus.SUPPRESSED,
}


class SubmitCheck(Protocol):
    """The suppression policy at submit time (``jetmail.deliverability.policy.SuppressionPolicy``): why an
    address may not get this category of mail (``suppressed: <reason>``), or None."""

    def at_submit(self, email: str, *, category: str) -> str | None: ...

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


def new_message_id() -> str:
    # time-ordered prefix keeps ids sortable by creation; 64 random bits keep them unguessable
    return f"msg_{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


class SendRequest(BaseModel):
    """Body of ``POST /v1/messages``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    template: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    to: str = Field(min_length=3, max_length=320, description="recipient address")
    name: OneLine | None = Field(default=None, max_length=200, description="recipient display name")
    context: dict[str, Any] = Field(default_factory=dict, description="template variables")
    language: str | None = Field(default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    timezone: TimeZone | None = Field(default=None, max_length=64)
    send_at: datetime | None = Field(default=None, description="deliver at this time (RFC 3339) instead of now")
    from_: OneLine | None = Field(default=None, alias="from", max_length=320)
    reply_to: OneLine | None = Field(default=None, max_length=320)

    @field_validator("to")
    @classmethod
    def _valid_to(cls, value: str) -> str:
        try:
            return normalise_email(value)
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None

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
    tags: list[str] | None = None
    metadata: dict[str, str] | None = None
    history: list[HistoryEntry] = Field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def request_hash(request: SendRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class MessageRepository:
    """Message records: one item each, one GetItem to read, one conditional UpdateItem per transition."""

    def __init__(self, table: Table, *, retention_days: int = 400) -> None:
        self.table = table
        self.retention = timedelta(days=retention_days)

    def record(self, message_id: str, *, request: SendRequest, status: MessageStatus, category: str = "transactional",
               extra: dict[str, Any] | None = None, detail: str | None = None) -> dict[str, Any]:
        created = now_iso()
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

    def __init__(self, *, table: Table, templates: TemplateStore, queue: JobQueue,
                 repository: MessageRepository | None = None, composer: Composer | None = None,
                 policy: SubmitCheck | None = None) -> None:
        self.table = table
        self.templates = templates
        self.queue = queue
        self.messages = repository or MessageRepository(table)
        # checks the From address and, for marketing templates, the bulk-sender rules
        self.composer = composer
        # refuses suppressed recipients when a message is accepted; None: the worker alone decides
        self.policy = policy

    def submit(self, request: SendRequest, *, api_key_id: str | None = None, idempotency_key: str | None = None,
               extra: dict[str, Any] | None = None) -> tuple[MessagePublic, bool]:
        """Record and enqueue one message; returns (message, created). Raises TemplateNotFound,
        IdempotencyConflict, SenderNotAllowed and NotCompliant (a marketing template without an
        unsubscribe link or postal address). A suppressed recipient's message is recorded ``suppressed``
        and not enqueued."""
        template = self.templates.resolve(request.template, request.language)
        if self.composer is not None:
            self.composer.check_from(request.from_)
            # rendered with this request's context over the template's samples: what will be sent
            self.composer.require_compliant([template], request.context or None)
        category = template.category or "transactional"
        refused = self.policy.at_submit(request.to, category=category) if self.policy is not None else None
        message_id = new_message_id()
        due = request.send_at is not None and request.send_at > datetime.now(UTC)
        status = MessageStatus.SUPPRESSED if refused else MessageStatus.SCHEDULED if due else MessageStatus.QUEUED
        record = self.messages.record(message_id, request=request, status=status, category=category, extra=extra,
                                      detail=refused)
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
                    return self._create(record, request), True
                if existing["body_hash"] != body_hash:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request body"
                    ) from None
                try:
                    item = self.messages.get(existing["message_id"])
                except MessageNotFound:
                    record = {**record, "pk": keys.message(existing["message_id"]).pk, "id": existing["message_id"]}
                    try:
                        self.table.put(record, condition="attribute_not_exists(pk)")
                    except ConditionFailed:
                        pass  # a concurrent retry completed it
                    item = self.messages.get(existing["message_id"])
                if item["status"] in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
                    # the first attempt may have died before enqueueing; the job id de-duplicates
                    self._enqueue(item["id"], request)
                return public(item), False
        return self._create(record, request), True

    def _create(self, record: dict[str, Any], request: SendRequest) -> MessagePublic:
        try:
            self.table.put(record, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            # the id was made by this call, so the item can only be our own write: the SDK repeated a put
            # whose reply was lost (a timeout after DynamoDB applied it)
            pass
        if record["status"] != MessageStatus.SUPPRESSED:
            self._enqueue(record["id"], request)
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
        submission server); returns their ids, in recipient order. One suppression check, one batch write,
        one batched publish; a suppressed recipient's message is recorded ``suppressed`` and not enqueued."""
        refused = (self.policy.at_submit_all(submission.recipients, category=submission.category)
                   if self.policy is not None else {})
        records = [self.messages.raw_record(message_id, to=to, submission=submission, refused=refused.get(to))
                   for message_id, to in zip(submission.message_ids, submission.recipients, strict=True)]
        self.table.batch_put(records)
        due = [r["id"] for r in records if r["status"] == MessageStatus.QUEUED]
        if due:
            self.queue.enqueue_many(SEND_TASK, [{"message_id": i} for i in due], queue=TRANSACTIONAL_QUEUE,
                                    priority="high", job_ids=due, max_retries=5)
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
