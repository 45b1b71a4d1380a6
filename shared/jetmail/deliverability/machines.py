"""Machine opens and scanner clicks: who fetched a pixel or followed a link when no person did.

One set of rules for every tracker, so jetmail's own pixel and redirect and SES's open and click
events (should SES tracking ever be switched on) count people the same way; reports and A/B winners
use human counts only. Known proxy and scanner user agents, Apple Mail Privacy Protection (its
proxies fetch from Apple's 17.0.0.0/8 with a bare ``Mozilla/5.0`` agent), opens and clicks within
seconds of sending (a gateway fetched the message), and several different links of one message
clicked within a couple of seconds (a scanner following every link).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

from jetmail.deliverability.useragents import apple_proxy
from jetmail.storage import keys

SCANNER_AGENTS = re.compile(
    r"barracuda|mimecast|proofpoint|symantec|messagelabs|trendmicro|trend micro|fireeye|forcepoint|sophos|"
    r"cisco|ironport|safelinks|microsoft office protection|avanan|checkpoint|zscaler|paloalto|"
    r"bot\b|spider|crawler|python-requests|python-httpx|curl/|wget/|go-http-client|java/|libwww|okhttp|"
    r"headlesschrome|phantomjs|linkpreview|slackbot|facebookexternalhit",
    re.IGNORECASE,
)
PREFETCH_WINDOW = timedelta(seconds=2)
SCAN_CLICK_WINDOW = timedelta(seconds=10)
LINK_BURST_WINDOW = timedelta(seconds=2)


def is_machine(kind: Literal["open", "click"], *, user_agent: str | None, ip: str | None,
               since_send: timedelta | None) -> bool:
    if not user_agent or SCANNER_AGENTS.search(user_agent):
        return True
    if kind == "open" and apple_proxy(ip, user_agent):
        return True
    window = PREFETCH_WINDOW if kind == "open" else SCAN_CLICK_WINDOW
    return since_send is not None and timedelta(0) <= since_send < window


def link_burst(stats: Any, message_id: str, *, link: int | str | None, now: datetime) -> bool:
    """Another link of the same message clicked within the burst window: a scanner, not a reader.
    ``link`` is the link's index (jetmail's redirect) or its URL (SES click events)."""
    recent = set()
    for item in stats.query_all(pk=keys.events_partition(message_id), sk_prefix=keys.event_kind_prefix("click")):
        if now - datetime.fromisoformat(item["occurred_at"]) < LINK_BURST_WINDOW:
            recent.add(item.get("link_index") if isinstance(link, int) or link is None else item.get("link_url"))
    recent.discard(link)
    return len(recent) >= 1
