"""Fixed windows aligned to wall-clock boundaries, and what each lets a category take.

A window's KV key names the provider, the kind and the window's start in whole epoch seconds
(``ses.s.1718000000``, ``ses.dom.gmail.com.m.1717999980``), so every worker on every machine counts
the same second against the same key. Second windows start at whole seconds, minutes at whole
minutes, days at 00:00 UTC: the same seconds an observer (the receiving server, an SMTP sink's
arrival times) counts in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from jetmail.deliverability.ratelimit.config import RateConfig

Category = Literal["transactional", "marketing"]
CATEGORIES: tuple[Category, ...] = ("transactional", "marketing")

SECOND, MINUTE, HOUR, DAY = 1, 60, 3600, 86400


@dataclass(frozen=True, slots=True)
class Window:
    name: str  # "second", "minute", "hour", "day", "domain gmail.com"
    key: str
    start: int
    end: int
    # every message counts against ``limit``; marketing also against ``marketing_limit`` and, during a
    # warm-up, stops once the total (transactional included) reaches ``marketing_total_cap``
    limit: int | None
    marketing_limit: int | None
    marketing_total_cap: int | None = None

    @property
    def ttl(self) -> int:
        """Seconds a counter outlives its last update: long enough to be read for the whole window."""
        return 2 * (self.end - self.start) + 10

    def available(self, category: Category, total: int, marketing: int) -> int | None:
        """Tokens ``category`` may still take given the counts so far; None when nothing limits it."""
        caps: list[int] = []
        if self.limit is not None:
            caps.append(self.limit - total)
        if category == "marketing":
            if self.marketing_limit is not None:
                caps.append(self.marketing_limit - marketing)
            if self.marketing_total_cap is not None:
                caps.append(self.marketing_total_cap - total)
        return max(0, min(caps)) if caps else None

    def cap(self, category: Category) -> int | None:
        """The most ``category`` can take in this window when it has it to itself."""
        return self.available(category, 0, 0)


def spread(rate: float, second: int) -> int:
    """Whole tokens for one second of a fractional per-second rate: 2.5/s gives 2, 3, 2, 3, …, so any run
    of seconds averages ``rate`` and every worker computes the same number for the same second."""
    return math.floor(rate * (second + 1)) - math.floor(rate * second)


def plan(config: RateConfig, *, now: float, rate: float | None, domain: str | None) -> list[Window]:
    """The windows a message to ``domain`` sent at ``now`` counts against, most often binding first.

    ``rate`` is the effective per-second rate (the configured one lowered by throttling), None for no
    per-second limit. ``domain`` must be normalized; only domains with a limit get a window.
    """
    keep = 1 - config.transactional_share
    prefix = config.provider
    windows: list[Window] = []
    if rate is not None:
        second = math.floor(now)
        total = spread(rate, second)
        windows.append(Window("second", f"{prefix}.s.{second}", second, second + SECOND, total,
                              min(total, spread(rate * keep, second))))
    if domain is not None and domain in config.domains:
        start = math.floor(now / MINUTE) * MINUTE
        per_domain = config.domains[domain]
        windows.append(Window(f"domain {domain}", f"{prefix}.dom.{domain}.m.{start}", start, start + MINUTE,
                              per_domain, math.floor(per_domain * keep)))
    limits = config.limits
    for name, kind, length, limit in (("minute", "m", MINUTE, limits.per_minute),
                                      ("hour", "h", HOUR, limits.per_hour)):
        if limit is not None:
            start = math.floor(now / length) * length
            windows.append(Window(name, f"{prefix}.{kind}.{start}", start, start + length, limit,
                                  math.floor(limit * keep)))
    warmup = config.warmup(now)
    if limits.per_day is not None or warmup is not None:
        start = math.floor(now / DAY) * DAY
        per_day = limits.per_day
        windows.append(Window("day", f"{prefix}.d.{start}", start, start + DAY, per_day,
                              math.floor(per_day * keep) if per_day is not None else None,
                              warmup[1] if warmup is not None else None))
    return windows
