"""What the rate limiter enforces: provider limits per window, per-domain limits, the transactional share,
the adaptive (AIMD) parameters and the warm-up schedule; built once from ``Settings``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any

from jetmail.config import ConfigError, Settings
from jetmail.kv.buckets import RATE_LIMITS

BUCKET = RATE_LIMITS.name

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_DOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")


def normalize_domain(domain: str) -> str:
    """Lower case, no trailing dot, IDNA (``bücher.de`` -> ``xn--bcher-kva.de``); an address gives its domain."""
    text = domain.strip().rsplit("@", 1)[-1].rstrip(".").lower()
    if text.isascii():
        return text  # what the IDNA codec gives back for it, without its per-label Python work
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """A provider's sending limits; ``None`` means no limit for that window."""

    per_second: float | None = None
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_second", "per_minute", "per_hour", "per_day"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None (no limit), got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateConfig:
    """Everything a ``RateLimiter`` needs; every worker of a provider must use the same values.

    ``domains``: recipient domain -> messages per minute. ``transactional_share``: the part of every
    window marketing mail may never take. ``warmup_schedule[n]`` caps the marketing mail of UTC day
    ``n`` counted from ``warmup_start`` (transactional mail is counted towards the cap but never held
    back by it); after the last entry there is no cap.
    """

    provider: str
    limits: RateLimits = RateLimits()
    domains: Mapping[str, int] = field(default_factory=dict)
    transactional_share: float = 0.2
    guard: float = 0.05
    throttle_factor: float = 0.5
    throttle_floor: float = 1.0
    # throttle reports closer together than this are one episode: halve once, not once per worker
    throttle_cooldown: float = 1.0
    recovery_step: float = 0.05
    recovery_interval: float = 10.0
    warmup_schedule: tuple[int, ...] = ()
    warmup_start: date | None = None
    bucket: str = BUCKET
    replicas: int = 1

    def __post_init__(self) -> None:
        if not _TOKEN.match(self.provider):
            raise ValueError(f"provider {self.provider!r} must match [A-Za-z0-9_-]+")
        if not _TOKEN.match(self.bucket):
            raise ValueError(f"bucket {self.bucket!r} must match [A-Za-z0-9_-]+")
        domains: dict[str, int] = {}
        for name, per_minute in self.domains.items():
            key = normalize_domain(name)
            if not _DOMAIN.match(key):
                raise ValueError(f"domain limit for {name!r}: not a domain name")
            if per_minute <= 0:
                raise ValueError(f"domain limit for {name!r} must be positive, got {per_minute}")
            domains[key] = int(per_minute)
        object.__setattr__(self, "domains", MappingProxyType(domains))
        if not 0 <= self.transactional_share < 1:
            raise ValueError(f"transactional_share must be in [0, 1), got {self.transactional_share}")
        if not 0 <= self.guard <= 0.5:
            raise ValueError(f"guard must be between 0 and 0.5 s, got {self.guard}")
        if not 0 < self.throttle_factor < 1:
            raise ValueError(f"throttle_factor must be in (0, 1), got {self.throttle_factor}")
        for name in ("throttle_floor", "recovery_step", "recovery_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.throttle_cooldown < 0:
            raise ValueError(f"throttle_cooldown must not be negative, got {self.throttle_cooldown}")
        if any(cap <= 0 for cap in self.warmup_schedule):
            raise ValueError("warmup_schedule caps must be positive")
        if self.warmup_schedule and self.warmup_start is None:
            raise ValueError("warmup_start is required with a warmup_schedule")
        object.__setattr__(self, "warmup_schedule", tuple(int(cap) for cap in self.warmup_schedule))

    @classmethod
    def from_settings(cls, settings: Settings, *, limits: RateLimits | None = None) -> RateConfig:
        """The config for ``settings.provider``; ``limits`` (e.g. ``limits_from_ses``) replaces the
        provider limits from the settings."""
        try:
            return cls(
                provider=settings.provider,
                limits=limits if limits is not None else RateLimits(
                    per_second=settings.rate_per_second or None,
                    per_minute=settings.rate_per_minute or None,
                    per_hour=settings.rate_per_hour or None,
                    per_day=settings.rate_per_day or None,
                ),
                domains=settings.rate_domain_limits,
                transactional_share=settings.rate_transactional_share,
                guard=settings.rate_window_guard_s,
                throttle_factor=settings.rate_throttle_factor,
                throttle_floor=settings.rate_throttle_floor,
                recovery_step=settings.rate_recovery_step,
                recovery_interval=settings.rate_recovery_interval_s,
                warmup_schedule=tuple(settings.rate_warmup_schedule),
                warmup_start=settings.rate_warmup_start,
                replicas=settings.stream_replicas,
            )
        except ValueError as exc:
            if "warmup_start" in str(exc):
                raise ConfigError("JETMAIL_RATE_WARMUP_START is required when JETMAIL_RATE_WARMUP_SCHEDULE "
                                  "is set") from None
            raise ConfigError(f"rate limits: {exc}") from None

    def warmup(self, now: float) -> tuple[int, int] | None:
        """``(day, cap)`` of the warm-up on the UTC day of ``now`` (day 1 is ``warmup_start``), or None
        when there is no warm-up or it is over. Days before the start use the first day's cap."""
        if not self.warmup_schedule or self.warmup_start is None:
            return None
        index = max(0, (datetime.fromtimestamp(now, UTC).date() - self.warmup_start).days)
        if index >= len(self.warmup_schedule):
            return None
        return index + 1, self.warmup_schedule[index]


def limits_from_ses(sesv2_client: Any, *, base: RateLimits | None = None) -> RateLimits:
    """The SES account's quota (``GetAccount`` ``SendQuota``) as limits: ``MaxSendRate`` per second and
    ``Max24HourSend`` per day (-1, unlimited, becomes None); minute and hour limits come from ``base``.

    SES counts the daily quota over a rolling 24 hours; the limiter's day window is the UTC day, so
    keep some headroom if a day's sending is bunched around midnight.
    """
    quota = sesv2_client.get_account().get("SendQuota") or {}
    rate = quota.get("MaxSendRate")
    day = quota.get("Max24HourSend")
    return replace(
        base if base is not None else RateLimits(),
        per_second=float(rate) if rate is not None and rate > 0 else None,
        per_day=int(day) if day is not None and day > 0 else None,
    )
