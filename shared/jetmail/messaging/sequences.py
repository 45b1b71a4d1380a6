"""Sequences: several messages to one recipient on a timeline (welcome series, order + shipping).

Enrolling creates every step's message record at once and schedules each as a delayed job (a
native JetStream schedule, no polling). Cancelling moves pending step messages to ``cancelled``
and removes their schedules; a step that fires anyway finds its message cancelled and sends
nothing. The enrolment keeps why (``reason``): ``cancelled`` by hand, ``unsubscribed`` (only the
pending marketing steps go; a transactional step such as a shipping notice still sends), or
``suppressed: <reason>`` after a hard bounce or complaint. Every step re-checks at send time, through
the normal delivery path, that the recipient may still be mailed.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from jetmail.messaging.messages import (
    IdempotencyConflict,
    MessageService,
    MessageStatus,
    SendRequest,
    now_iso,
    request_hash,
)
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table, item_fields

# ISO 8601 durations as pydantic writes them ("-P1D", "P3Y207D") or seconds: JSON Schema's "duration" format
# is stricter than what the API reads and writes, so the schema says string or number
Duration = Annotated[timedelta, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]})]


class StepAt(BaseModel):
    """Send at a time taken from the request context, shifted by an offset."""

    model_config = ConfigDict(extra="forbid")
    context_field: str = Field(min_length=1, max_length=64)
    offset: Duration = Field(default=timedelta(0), description="e.g. -P1D (ISO 8601) or seconds")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    delay: Duration = Field(default=timedelta(0), description="after enrolment: ISO 8601 (P1D) or seconds")
    at: StepAt | None = None

    @field_validator("delay")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("delay must not be negative")
        return value


class SequenceDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    steps: list[Step] = Field(min_length=1, max_length=20)


BUILT_IN: dict[str, SequenceDefinition] = {
    "welcome": SequenceDefinition(name="welcome", steps=[
        Step(template="welcome"),
        Step(template="getting_started", delay=timedelta(days=1)),
        Step(template="tips_and_tricks", delay=timedelta(days=7)),
    ]),
    "order": SequenceDefinition(name="order", steps=[
        Step(template="order_confirmation"),
        Step(template="shipping_notification",
             at=StepAt(context_field="estimated_delivery", offset=timedelta(days=-1))),
    ]),
}


class EnrolRequest(BaseModel):
    """Body of ``POST /v1/sequences``: a named sequence, or inline ``steps``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    sequence: str | None = Field(default=None, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    steps: list[Step] | None = Field(default=None, min_length=1, max_length=20)
    to: str = Field(min_length=3, max_length=320)
    name: str | None = Field(default=None, max_length=200)
    context: dict[str, Any] = Field(default_factory=dict)
    language: str | None = Field(default=None, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    timezone: str | None = Field(default=None, max_length=64)
    from_: str | None = Field(default=None, alias="from", max_length=320)

    @model_validator(mode="after")
    def _one_of(self) -> EnrolRequest:
        if (self.sequence is None) == (self.steps is None):
            raise ValueError("give either 'sequence' (a defined sequence name) or inline 'steps'")
        return self


class StepPublic(BaseModel):
    index: int
    template: str
    message_id: str
    send_at: str
    status: str | None = None


class EnrolmentPublic(BaseModel):
    id: str
    sequence: str
    to: str
    status: str
    reason: str | None = Field(default=None, description="why its pending steps were cancelled: ``cancelled``, "
                                                         "``unsubscribed`` or ``suppressed: <reason>``")
    created_at: str
    steps: list[StepPublic]


class SequenceNotFound(LookupError):
    pass


class EnrolmentNotFound(LookupError):
    pass


class StepTimeError(ValueError):
    pass


def _parse_time(value: Any, field: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise StepTimeError(f"context.{field} is not an ISO 8601 date or time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_horizon(steps: list[Step], horizon: timedelta) -> None:
    """Refuse a step whose delay or offset reaches past ``horizon`` (a definition is checked when saved)."""
    for index, step in enumerate(steps):
        if step.delay > horizon:
            raise StepTimeError(f"steps[{index}].delay is more than {horizon.days} days")
        if step.at is not None and abs(step.at.offset) > horizon:
            raise StepTimeError(f"steps[{index}].at.offset is more than {horizon.days} days either way")


def _same_body(enrolment: dict[str, Any], request: EnrolRequest) -> dict[str, Any]:
    """An enrolment found under a reused Idempotency-Key, if it was made from this very body (as a message's
    key is checked); IdempotencyConflict otherwise. One made before bodies were recorded passes."""
    if enrolment.get("body_hash", request_hash(request)) != request_hash(request):
        raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
    return enrolment


class SequenceService:
    def __init__(self, *, table: Table, messages: MessageService, horizon: timedelta = timedelta(days=3653)) -> None:
        self.table = table
        self.messages = messages
        # how far ahead a step may be sent: bounds delays, offsets and context dates (JETMAIL_SEQUENCE_MAX_DAYS)
        self.horizon = horizon

    # ---- definitions
    def define(self, definition: SequenceDefinition) -> SequenceDefinition:
        check_horizon(definition.steps, self.horizon)
        self.table.put(keys.sequence_definition(definition.name).item(
            gsi1pk=keys.SEQUENCE_DEFINITIONS, gsi1sk=definition.name, definition=definition.model_dump_json()))
        return definition

    def definition(self, name: str) -> SequenceDefinition:
        item = self.table.get(*keys.sequence_definition(name))
        if item is not None:
            return SequenceDefinition.model_validate_json(item["definition"])
        if name in BUILT_IN:
            return BUILT_IN[name]
        raise SequenceNotFound(f"sequence {name!r} is not defined")

    def definitions(self) -> list[SequenceDefinition]:
        stored = {d.name: d for d in (SequenceDefinition.model_validate_json(i["definition"])
                                      for i in self.table.query_all(pk=keys.SEQUENCE_DEFINITIONS, index="gsi1"))}
        return [*stored.values(), *(d for n, d in BUILT_IN.items() if n not in stored)]

    # ---- enrolments
    def enrol(self, request: EnrolRequest, *, api_key_id: str | None = None,
              idempotency_key: str | None = None) -> tuple[EnrolmentPublic, bool]:
        name = request.sequence or "inline"
        steps = request.steps if request.steps is not None else self.definition(name).steps
        now = datetime.now(UTC)
        if idempotency_key:
            digest = hashlib.sha256(f"{api_key_id}\x00{idempotency_key}".encode()).hexdigest()[:20]
            enrolment_id = f"seq_{digest}"
            existing = self.table.get(*keys.enrolment(enrolment_id), consistent=True)
            if existing is not None:
                return self._public(_same_body(existing, request)), False
        else:
            enrolment_id = f"seq_{secrets.token_hex(10)}"
        check_horizon(steps, self.horizon)
        planned: list[tuple[Step, datetime]] = []
        for step in steps:
            when = now + step.delay
            if step.at is not None:
                if step.at.context_field not in request.context:
                    raise StepTimeError(f"step {step.template!r} needs context.{step.at.context_field}")
                base = _parse_time(request.context[step.at.context_field], step.at.context_field)
                try:
                    when = base + step.at.offset
                except OverflowError:
                    raise StepTimeError(f"context.{step.at.context_field} shifted by the step's offset is past "
                                        "the calendar's end") from None
            if when - now > self.horizon:
                raise StepTimeError(f"step {step.template!r} would be sent on {when:%Y-%m-%d}, more than "
                                    f"{self.horizon.days} days ahead")
            planned.append((step, max(when, now)))
        sends = [SendRequest(template=step.template, to=request.to, name=request.name, context=request.context,
                             language=request.language, timezone=request.timezone,
                             send_at=when if when > now else None, from_=request.from_) for step, when in planned]
        for send in sends:  # every step renders with this context before any is accepted
            self.messages.check(send)
        records = []
        for index, ((step, when), send) in enumerate(zip(planned, sends, strict=True)):
            step_key = f"{idempotency_key}#step{index}" if idempotency_key else None
            message, _ = self.messages.submit(send, api_key_id=api_key_id, idempotency_key=step_key,
                                              extra={"sequence_id": enrolment_id, "sequence_step": index})
            records.append({"index": index, "template": step.template, "message_id": message.id,
                            "send_at": when.isoformat()})
        created = now_iso()
        item = keys.enrolment(enrolment_id).item(
            gsi1pk=keys.recipient(request.to.lower()), gsi1sk=keys.by_recipient(keys.ENROLMENT_PREFIX, created),
            id=enrolment_id, sequence=name, to=request.to, status="active", created_at=created, steps=records,
            **({"body_hash": request_hash(request)} if idempotency_key else {}))
        try:
            self.table.put(item, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            raced = self.table.get(*keys.enrolment(enrolment_id), consistent=True) or item
            return self._public(_same_body(raced, request)), False
        return self._public(item), True

    def get(self, enrolment_id: str) -> EnrolmentPublic:
        item = self.table.get(*keys.enrolment(enrolment_id), consistent=True)
        if item is None:
            raise EnrolmentNotFound(f"sequence enrolment {enrolment_id!r} not found")
        return self._public(item, with_status=True)

    def cancel(self, enrolment_id: str, *, reason: str = "cancelled", categories: frozenset[str] | None = None) -> int:
        """Cancel the enrolment's pending steps (only those whose template is of one of ``categories``,
        when given); returns how many messages were cancelled. The enrolment is ``cancelled`` once no
        step is left pending, and records ``reason`` either way."""
        item = self.table.get(*keys.enrolment(enrolment_id), consistent=True)
        if item is None:
            raise EnrolmentNotFound(f"sequence enrolment {enrolment_id!r} not found")
        cancelled = 0
        left = 0
        for step in item.get("steps", []):
            if categories is not None:
                record = self.messages.messages.get(step["message_id"])
                if (record.get("category") or "transactional") not in categories:
                    if record.get("status") in (MessageStatus.QUEUED, MessageStatus.SCHEDULED):
                        left += 1
                    continue
            if self.cancel_message(step["message_id"], reason=reason):
                cancelled += 1
        if cancelled == 0 and left:
            return 0
        self.table.update(*keys.enrolment(enrolment_id), expression="SET #s = :c, cancelled_at = :at, reason = :r",
                          names={"#s": "status"},
                          params={":c": "active" if left else "cancelled", ":at": now_iso(), ":r": reason})
        return cancelled

    def cancel_for_recipient(self, email: str, *, sequence: str | None = None, reason: str = "cancelled",
                             categories: frozenset[str] | None = None) -> int:
        cancelled = 0
        for item in self._enrolments(email):
            if item.get("status") == "active" and (sequence is None or item.get("sequence") == sequence):
                cancelled += self.cancel(item["id"], reason=reason, categories=categories)
        return cancelled

    def enrolments_of(self, email: str) -> list[dict[str, Any]]:
        """The enrolments of ``email`` as held (without keys): one Query of gsi1 per ~1 MB page."""
        return [item_fields(item) for item in self._enrolments(email)]

    def forget(self, email: str) -> int:
        """Delete the enrolments of ``email`` (its messages are the message records'); returns how many.
        One Query of gsi1 per ~1 MB page and one BatchWriteItem per 25 enrolments."""
        rows = [(item["pk"], item["sk"]) for item in self._enrolments(email)]
        self.table.batch_delete(rows)
        return len(rows)

    def _enrolments(self, email: str) -> Iterator[dict[str, Any]]:
        return self.table.query_all(pk=keys.recipient(email.lower()), sk_prefix=keys.ENROLMENT_PREFIX, index="gsi1")

    def cancel_message(self, message_id: str, *, reason: str) -> bool:
        try:
            self.messages.messages.transition(message_id, MessageStatus.CANCELLED,
                                              allowed_from={MessageStatus.QUEUED, MessageStatus.SCHEDULED},
                                              detail=reason)
        except ConditionFailed:
            return False
        self.messages.queue.cancel(message_id)
        return True

    def _public(self, item: dict[str, Any], *, with_status: bool = False) -> EnrolmentPublic:
        steps = []
        for step in item.get("steps", []):
            status = None
            if with_status:
                status = self.messages.messages.get(step["message_id"]).get("status")
            steps.append(StepPublic(**step, status=status))
        return EnrolmentPublic(id=item["id"], sequence=item["sequence"], to=item["to"], status=item["status"],
                               reason=item.get("reason"), created_at=item["created_at"], steps=steps)
