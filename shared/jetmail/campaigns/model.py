"""Campaign models: what a marketer creates, what the API shows back, and what a batch job carries."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from jetmail.audience.fields import OneLine

SLUG = r"^[a-z0-9][a-z0-9_-]*$"


class _Model(BaseModel):
    """Builds its validator on first use: a scheduler tick imports these models without validating any of them
    unless a campaign is due, and building every one cost ~30 ms of each of its cold starts."""

    model_config = ConfigDict(defer_build=True)


class CampaignState(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


class AudienceSource(_Model):
    """One list or one segment; ``priority`` orders the audience (high segments are mailed first)."""

    model_config = ConfigDict(extra="forbid")
    list_id: str | None = Field(default=None, max_length=64)
    segment_id: str | None = Field(default=None, max_length=64)
    priority: Literal["high", "normal", "low"] = "normal"

    @model_validator(mode="after")
    def _exactly_one(self) -> AudienceSource:
        if (self.list_id is None) == (self.segment_id is None):
            raise ValueError("give exactly one of list_id or segment_id")
        return self

    @property
    def label(self) -> str:
        return f"list:{self.list_id}" if self.list_id else f"segment:{self.segment_id}"


class Variant(_Model):
    """One arm of an A/B test; unset fields fall back to the campaign's."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9_-]+$")
    subject: OneLine | None = Field(default=None, max_length=998)
    template: str | None = Field(default=None, max_length=64, pattern=SLUG)
    from_name: OneLine | None = Field(default=None, max_length=200)
    send_delay: timedelta = Field(default=timedelta(0), description="send this variant later (send-time tests)")

class ABTest(_Model):
    model_config = ConfigDict(extra="forbid")
    variants: list[Variant] = Field(min_length=2, max_length=5)
    test_percentage: float = Field(gt=0, le=100, description="share of the audience in the test, split evenly")
    metric: Literal["open_rate", "click_rate"] = "open_rate"
    test_duration: timedelta = Field(default=timedelta(hours=4), description="ISO 8601 (PT4H) or seconds")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    fallback: Literal["send_best", "send_a", "manual"] = "send_best"
    seed: int = Field(default=0, description="the split is reproducible for a seed")

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, value: list[Variant]) -> list[Variant]:
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return value


class CampaignCreate(_Model):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=200)
    template: str = Field(min_length=1, max_length=64, pattern=SLUG)
    subject: OneLine | None = Field(default=None, max_length=998, description="overrides the template's subject")
    from_: OneLine | None = Field(default=None, alias="from", max_length=320)
    reply_to: OneLine | None = Field(default=None, max_length=320)
    context: dict[str, Any] = Field(default_factory=dict, description="variables shared by every recipient")
    audience: list[AudienceSource] = Field(min_length=1, max_length=20)
    exclusions: list[AudienceSource] = Field(default_factory=list, max_length=20)
    ab_test: ABTest | None = None
    archive: bool = Field(default=False, description="show it, once sent, in the public archive of each public "
                                                     "list of its audience")
    archive_context: dict[str, Any] | None = Field(
        default=None, description="the archive's copy renders with these values in place of any recipient's "
                                  "(``attributes`` included); none: the template's sample_context")


    @field_validator("archive_context")
    @classmethod
    def _archive_context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_archive_context(value)


class CampaignUpdate(_Model):
    """Body of ``PATCH /v1/campaigns/{id}``: what may change in any state, sent campaigns included."""

    model_config = ConfigDict(extra="forbid")
    archive: bool | None = None
    archive_context: dict[str, Any] | None = None

    @field_validator("archive_context")
    @classmethod
    def _archive_context(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_archive_context(value)


def check_archive_context(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    # on use: the templating package loads Jinja, which the scheduler's cold start never needs
    from jetmail.messaging.templating.model import STANDARD_NAMES

    reserved = sorted(STANDARD_NAMES.intersection(value))
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: filled in by every render, not from archive_context")
    if len(json.dumps(value, default=str)) > 64 * 1024:
        raise ValueError("archive_context is over 64 KiB as JSON")
    return value


class ScheduleRequest(_Model):
    """``at`` (a local time in ``timezone`` when it has no offset) or a recurring ``cron``."""

    model_config = ConfigDict(extra="forbid")
    at: datetime | None = None
    cron: str | None = Field(default=None, max_length=100,
                             description="5 fields (min hour day month weekday), or 6 with seconds first")
    timezone: str = Field(default="UTC", max_length=64)

    @model_validator(mode="after")
    def _one(self) -> ScheduleRequest:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if (self.at is None) == (self.cron is None):
            raise ValueError("give exactly one of 'at' or 'cron'")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if self.at is not None and self.at.tzinfo is None:
            self.at = self.at.replace(tzinfo=zone)
        if self.cron is not None:
            from jetmail.queue.patterns import cron_pattern

            cron_pattern(self.cron, timezone=self.timezone)  # what nats-server refuses; ValueError says why
        return self


class WinnerPick(_Model):
    model_config = ConfigDict(extra="forbid")
    variant: str = Field(min_length=1, max_length=16)


class Progress(_Model):
    total: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0


class VariantStats(_Model):
    name: str
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    rate: float = 0.0


class ABResult(_Model):
    state: Literal["testing", "waiting", "decided", "manual"] = "testing"
    metric: str
    winner: str | None = None
    p_value: float | None = None
    confidence: float | None = None
    decided_by: Literal["test", "fallback", "manual"] | None = None
    decide_at: str | None = None
    variants: list[VariantStats] = Field(default_factory=list)


class CampaignPublic(_Model):
    id: str
    name: str
    state: CampaignState
    template: str
    subject: str | None = None
    from_: str | None = Field(default=None, serialization_alias="from")
    audience: list[AudienceSource]
    exclusions: list[AudienceSource] = Field(default_factory=list)
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    scheduled_at: str | None = None
    cron: str | None = None
    timezone: str | None = None
    parent_id: str | None = None
    next_run_at: str | None = Field(default=None, description="when a scheduled campaign starts next: its "
                                                               "``scheduled_at``, or its cron's next firing; "
                                                               "null when paused or not scheduled")
    progress: Progress
    ab_test: ABTest | None = None
    ab: ABResult | None = None
    archive: bool = False


class CampaignFailure(_Model):
    """One recipient the campaign gave up on for good, and why."""

    email: str
    reason: str = Field(description="the provider's answer (``550 5.1.1 ...``), ``gave up: ...`` after the last "
                                    "retry, or ``cannot render: ...``")
    run: str = Field(description="``main``, or ``test`` / ``winner`` for an A/B test")
    batch: int
    position: int = Field(description="the recipient's place in its batch")
    message_id: str
    at: str = Field(description="when the failure was recorded (its batch finished)")


class CampaignFailurePage(_Model):
    failures: list[CampaignFailure]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page; "
                                                              "null on the last page")


# ---- what a batch job carries

class WireModel(_Model):
    """Readable names in code, one-letter keys in JSON. A batch carries up to ~100 of these in one JetStream
    message and one DynamoDB item, and journals one per recipient; the letters are the keys payloads had
    before these models, so a job or journal entry written then validates as it is.

    Every dump is the compact form, whoever asks for it (the job layer dumps payloads without
    ``by_alias``): keys are the aliases, and fields that are None or empty are left out. About 1 µs per
    model dumped, 0.7 µs validated."""

    model_config = ConfigDict(populate_by_name=True)

    @model_serializer
    def _compact(self) -> dict[str, Any]:
        return {alias: value for name, alias in _wire_keys(type(self))
                if (value := getattr(self, name)) is not None and value != {}}


@functools.cache
def _wire_keys(model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """(field name, alias) of every field, in declaration order."""
    return tuple((name, info.alias or name) for name, info in model.model_fields.items())


class BatchRecipient(WireModel):
    """One recipient of a batch, as the plan found them."""

    email: str = Field(alias="e")
    name: str | None = Field(default=None, alias="n")
    language: str | None = Field(default=None, alias="l")
    timezone: str | None = Field(default=None, alias="t")
    list_id: str | None = Field(default=None, alias="s",
                                description="the list the campaign reached them through: its unsubscribe link")
    attributes: dict[str, Any] = Field(default_factory=dict, alias="a")


class RecipientOutcome(WireModel):
    """What a batch did for one recipient: its journal entry on NATS, and a line of the batch's tally."""

    position: int = Field(ge=0, alias="p", description="the recipient's place in its batch")
    email: str = Field(alias="e")
    status: Literal["sent", "failed", "skipped"] = Field(alias="s")
    reason: str | None = Field(default=None, alias="r", description="why it failed or was skipped")
    provider_id: str | None = Field(default=None, alias="m", description="the provider's message id once sent")


class BatchCounts(_Model):
    """A batch's outcomes counted: what it adds to its campaign's counters."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0


def build_models() -> None:
    """Build every model's validator now, and no longer defer the validators built from them. The API's route
    modules call this when they load, before declaring the routes: FastAPI wraps each body and answer model in
    a validator of its own (a ``TypeAdapter``, with the parameter's name as alias), which pydantic defers too
    while the model says ``defer_build``, and then builds on the first request with a warning that the alias
    has no effect there."""
    pending: list[type[_Model]] = list(_Model.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        model.model_rebuild()
        model.model_config["defer_build"] = False
