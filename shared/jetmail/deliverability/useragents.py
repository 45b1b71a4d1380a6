"""Which mail client opened or clicked: a short family name from the user agent (and the IP).

Mail clients first (image proxies name the mailbox provider, not the reader's device): Apple Mail
Privacy Protection (Apple's 17.0.0.0/8 proxies, or a bare ``Mozilla/5.0``), the Gmail, Yahoo and
other image proxies, Outlook, Thunderbird, Apple Mail on macOS and iOS. Anything else is the
browser family that ua-parser finds ("Chrome", "Mobile Safari", "Firefox"), or "other".
"""

from __future__ import annotations

import ipaddress
import re

APPLE_PROXY_NET = ipaddress.ip_network("17.0.0.0/8")
APPLE_PRIVACY = "Apple Mail Privacy Protection"
UNKNOWN = "unknown"
FAMILY_MAX = 48

# (pattern, family) checked in order, before ua-parser: the proxies of mailbox providers and the
# desktop clients whose agents browsers' rules would misname
MAIL_CLIENTS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), family) for pattern, family in (
        (r"GoogleImageProxy|ggpht\.com", "Gmail"),
        (r"YahooMailProxy", "Yahoo Mail"),
        (r"Microsoft Outlook|ms-office|Outlook-iOS|Outlook-Android|MSOffice|Microsoft Office", "Outlook"),
        (r"Thunderbird", "Thunderbird"),
        (r"YandexImageResizer|Yandex.*Mail", "Yandex Mail"),
        (r"Superhuman", "Superhuman"),
        (r"Airmail", "Airmail"),
        (r"Spark/", "Spark"),
        (r"GMX|WEB\.DE", "GMX / WEB.DE"),
    )
)
# Apple Mail on iOS and iPadOS sends WebKit's agent without a browser token
APPLE_MAIL_IOS = re.compile(r"\((iPhone|iPad|iPod);.*AppleWebKit/[\d.]+ \(KHTML, like Gecko\) Mobile/\w+$")
APPLE_MAIL_MAC = re.compile(r"\(Macintosh;.*AppleWebKit/[\d.]+ \(KHTML, like Gecko\)$")


def apple_proxy(ip: str | None, user_agent: str | None) -> bool:
    """Apple Mail Privacy Protection fetched it: Apple's network, or the bare agent its proxies send."""
    if ip:
        try:
            if ipaddress.ip_address(ip) in APPLE_PROXY_NET:
                return True
        except ValueError:
            pass
    return (user_agent or "").strip() == "Mozilla/5.0"


def mail_client(user_agent: str | None, ip: str | None = None) -> str:
    """The mail client (or browser) family of an open or click; "unknown" without an agent."""
    agent = (user_agent or "").strip()
    if apple_proxy(ip, agent):
        return APPLE_PRIVACY
    if not agent:
        return UNKNOWN
    for pattern, family in MAIL_CLIENTS:
        if pattern.search(agent):
            return family
    if APPLE_MAIL_IOS.search(agent):
        return "Apple Mail (iOS)"
    if APPLE_MAIL_MAC.search(agent):
        return "Apple Mail"
    from ua_parser import parse_user_agent  # compiled on first use: cold starts skip it

    parsed = parse_user_agent(agent)
    family = parsed.family if parsed is not None else "Other"
    return (family if family != "Other" else "other")[:FAMILY_MAX]


def country_code(country: str | None) -> str:
    """A two-letter country code, upper-cased, or "unknown"."""
    code = (country or "").strip().upper()
    return code if len(code) == 2 and code.isalpha() and code != "XX" else UNKNOWN
