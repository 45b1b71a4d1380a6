"""Turning user-facing schedule specs (cron, intervals, due times) into NATS message-schedule headers."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The cron grammar nats-server's message schedules accept (its server/cron.go, after robfig/cron): six
# fields, seconds first; each a comma list of ``*``/``?`` or ``N`` or ``N-M``, optionally ``/step``; month and
# weekday names; weekdays 0-6 (no 7, ``L``, ``W`` or ``#``); and a pattern must fire within five years.
# Validating here by the same rules is what lets a caller refuse a cron before it changes any state: the
# server's own refusal (error 10189) only comes once the schedule is published.
_PREDEFINED = {"@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
               "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *",
               "@hourly": "0 0 * * * *"}
_MONTH_NAMES = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_WEEKDAY_NAMES = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int] | None], ...] = (
    ("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None), ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTH_NAMES), ("day of week", 0, 6, _WEEKDAY_NAMES))
_STAR = 1 << 63  # a field written as * or ?: day of month and day of week then must both match
_ATOI_RE = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi takes
CRON_HORIZON_YEARS = 5  # the server refuses a pattern with no firing within this many years
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|m|s|ms))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
MIN_INTERVAL_S = 1.0  # the server rejects shorter @every intervals


def cron_pattern(cron: str, *, timezone: str | None = None) -> str:
    """A 6-field (seconds first) cron the server accepts; 5-field crons run at second 0.

    Raises ValueError naming the problem for anything nats-server would refuse, including patterns that
    never fire (``0 0 30 2 *``), judged in ``timezone`` (UTC when None).
    """
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
    spec = _CronSpec.parse(expr, cron)
    if spec.next_after(datetime.now(UTC), _zone(timezone)) is None:
        raise ValueError(f"invalid cron {cron!r}: it never fires within {CRON_HORIZON_YEARS} years")
    return expr


def cron_next(cron: str, after: datetime, *, timezone: str | None = None) -> datetime | None:
    """The first firing of a valid ``cron`` (see ``cron_pattern``) strictly after ``after``, in UTC."""
    expr = cron_pattern(cron, timezone=timezone)
    spec = _CronSpec.parse(_PREDEFINED.get(expr, expr), cron)
    return spec.next_after(after, _zone(timezone))


def _zone(timezone: str | None) -> ZoneInfo:
    return ZoneInfo(check_timezone(timezone)) if timezone else ZoneInfo("UTC")


class _CronSpec:
    """The six fields as bit sets, as the server holds them."""

    def __init__(self, bits: list[int]) -> None:
        self.second, self.minute, self.hour, self.dom, self.month, self.dow = bits

    @classmethod
    def parse(cls, expr: str, original: str) -> _CronSpec:
        bits = []
        for text, (name, low, high, names) in zip(expr.split(" "), _CRON_FIELDS, strict=True):
            try:
                value = 0
                for part in (p for p in text.split(",") if p):
                    value |= _cron_range(part, low, high, names)
            except ValueError as exc:
                raise ValueError(f"invalid cron {original!r}: {name} {text!r}: {exc}") from None
            bits.append(value)
        return cls(bits)

    def _day_matches(self, day: date) -> bool:
        dom = bool(self.dom >> day.day & 1)
        dow = bool(self.dow >> (day.isoweekday() % 7) & 1)
        return dom and dow if (self.dom | self.dow) & _STAR else dom or dow

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime | None:
        """The first firing after ``after`` (aware), or None when there is none within the horizon."""
        start = after.astimezone(zone)
        seconds, minutes, hours = (_values(b, 59) for b in (self.second, self.minute, self.hour))
        day, last = start.date(), date(start.year + CRON_HORIZON_YEARS, 12, 31)
        while day <= last:
            if self.month >> day.month & 1 and self._day_matches(day):
                for hour in hours:
                    for minute in minutes:
                        for second in seconds:
                            when = datetime.combine(day, time(hour, minute, second), tzinfo=zone)
                            if when > start:
                                return when.astimezone(UTC)
                        if day == start.date() and hour < start.hour:
                            break  # the rest of this hour is past
            day += timedelta(days=1)
        return None


def _values(bits: int, high: int) -> list[int]:
    return [i for i in range(high + 1) if bits >> i & 1]


def _cron_int(text: str, names: dict[str, int] | None) -> int:
    if names and text.lower() in names:
        return names[text.lower()]
    if not _ATOI_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    value = int(text)
    if value < 0:
        raise ValueError(f"negative number ({value}) not allowed")
    return value


def _cron_range(expr: str, low: int, high: int, names: dict[str, int] | None) -> int:
    """``*`` | ``?`` | ``N`` | ``N-M``, then optionally ``/step`` (``N/step`` runs from N to the maximum)."""
    range_and_step = expr.split("/")
    low_high = range_and_step[0].split("-")
    extra = 0
    if low_high[0] in ("*", "?"):
        start, end, extra = low, high, _STAR
    else:
        start = _cron_int(low_high[0], names)
        if len(low_high) == 1:
            end = start
        elif len(low_high) == 2:
            end = _cron_int(low_high[1], names)
        else:
            raise ValueError("too many hyphens")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        step = _cron_int(range_and_step[1], None)
        if len(low_high) == 1:
            end = high
        if step > 1:
            extra = 0
    else:
        raise ValueError("too many slashes")
    if start < low:
        raise ValueError(f"beginning of range ({start}) below minimum ({low})")
    if end > high:
        raise ValueError(f"end of range ({end}) above maximum ({high})")
    if start > end:
        raise ValueError(f"beginning of range ({start}) beyond end of range ({end})")
    if step == 0:
        raise ValueError("step of range should be a positive number")
    value = 0
    for i in range(start, end + 1, step):
        value |= 1 << i
    return value | extra


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
