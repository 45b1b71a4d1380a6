"""What travels on the wire: the job envelope, dead-letter records, schedule specs. JSON only."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from .subjects import Priority


def utcnow() -> datetime:
    return datetime.now(UTC)


class Backoff(BaseModel):
    """Delay before a retry: ``base * 2**(attempt-1)`` seconds, capped at ``max``, then +/- ``jitter``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: float = Field(default=2.0, ge=0)
    max: float = Field(default=300.0, ge=0)
    jitter: float = Field(default=0.1, ge=0, le=1)

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        exponent = min(max(attempt, 1) - 1, 62)  # keep 2**n finite for absurd attempt counts
        capped = min(self.base * 2.0**exponent, self.max)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, capped * (1.0 + spread))


class JobEnvelope(BaseModel):
    """One job as stored in the stream.

    Unknown fields are ignored so a newer enqueuer does not break an older worker during a rolling deploy.
    """

    model_config = ConfigDict(extra="ignore")

    job_id: str = Field(min_length=1, max_length=512)
    task: str = Field(min_length=1, max_length=128)
    queue: str
    priority: Priority = "normal"
    payload: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = Field(default=3, ge=0, le=1000)
    backoff: Backoff = Field(default_factory=Backoff)
    enqueued_at: AwareDatetime = Field(default_factory=utcnow)
    schedule_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobRef:
    """The result of an enqueue: the job id, whether the stream already had it, and its stream sequence."""

    job_id: str
    duplicate: bool
    seq: int


DeadLetterReason = Literal["retries_exhausted", "permanent_failure", "invalid_payload", "unknown_task",
                           "delivery_limit"]


class DeadLetter(BaseModel):
    """A job that will not be retried any more, and why; ``seq`` is its sequence in the dead-letter stream."""

    model_config = ConfigDict(extra="ignore")

    seq: int | None = None
    reason: DeadLetterReason
    error: str
    where: str | None = None
    attempts: int
    queue: str | None = None
    subject: str
    stream_seq: int
    job_id: str | None = None
    task: str | None = None
    envelope: dict[str, Any] | None = None
    raw: str | None = None
    failed_at: AwareDatetime = Field(default_factory=utcnow)


class ScheduleInfo(BaseModel):
    """A recurring schedule as kept in the schedules bucket."""

    model_config = ConfigDict(extra="ignore")

    schedule_id: str
    task: str
    queue: str
    priority: Priority = "normal"
    cron: str | None = None
    every: str | None = None
    timezone: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    max_retries: int = 3
    backoff: Backoff = Field(default_factory=Backoff)
    paused: bool = False
    created_at: AwareDatetime = Field(default_factory=utcnow)
    updated_at: AwareDatetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _one_spec(self) -> ScheduleInfo:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule has exactly one of cron or every")
        return self

    @property
    def pattern(self) -> str:
        """The value of the ``Nats-Schedule`` header."""
        return self.cron if self.cron is not None else f"@every {self.every}"
