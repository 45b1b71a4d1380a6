"""Turning user-facing schedule specs (cron, intervals, due times) into NATS message-schedule headers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_PREDEFINED = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|m|s|ms))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
MIN_INTERVAL_S = 1.0  # the server rejects shorter @every intervals


def cron_pattern(cron: str) -> str:
    """A 6-field (seconds first) cron the server accepts; 5-field crons run at second 0."""
    if not isinstance(cron, str) or not cron.strip():
        raise ValueError("cron must be a non-empty string")
    expr = " ".join(cron.split())
    if expr.lower() in _PREDEFINED:
        return expr.lower()
    fields = expr.split(" ")
    if len(fields) == 5:
        expr = "0 " + expr
    elif len(fields) != 6:
        raise ValueError(f"invalid cron {cron!r}: use 5 fields (minute first) or 6 fields (second first)")
    if not croniter.is_valid(expr, second_at_beginning=True):
        raise ValueError(f"invalid cron {cron!r}")
    return expr


def every_pattern(every: float | timedelta | str) -> str:
    """The duration after ``@every``: ``"5m"``, ``"1h30m"``, ``90`` (seconds) or a timedelta; at least 1 s."""
    if isinstance(every, timedelta):
        every = every.total_seconds()
    if isinstance(every, bool):
        raise ValueError(f"invalid interval {every!r}")
    if isinstance(every, int | float):
        seconds = float(every)
        if seconds < MIN_INTERVAL_S:
            raise ValueError(f"interval must be at least {MIN_INTERVAL_S:g}s, got {seconds:g}s")
        return f"{int(seconds)}s" if seconds.is_integer() else f"{round(seconds * 1000)}ms"
    if not isinstance(every, str):
        raise ValueError(f"invalid interval {every!r}")
    text = every.strip().lower()
    if text.startswith("@every"):
        text = text.removeprefix("@every").strip()
    if not _DURATION_RE.match(text):
        raise ValueError(f"invalid interval {every!r}: use seconds or a duration like 30s, 5m, 1h30m")
    seconds = sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART_RE.findall(text))
    if seconds < MIN_INTERVAL_S:
        raise ValueError(f"interval must be at least {MIN_INTERVAL_S:g}s, got {every!r}")
    return text


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def at_pattern(when: datetime) -> str:
    """``@at <RFC 3339 UTC>`` with millisecond precision (the server honours fractions of a second)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("enqueue_at needs a timezone-aware datetime (e.g. datetime.now(UTC))")
    stamp = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"@at {stamp}"


def delay_seconds(delay: timedelta | float) -> float:
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if seconds < 0:
        raise ValueError(f"delay must not be negative, got {seconds:g}s")
    return seconds
