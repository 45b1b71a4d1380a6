"""Messages built per second: jetmail.messaging.mime against the stdlib EmailMessage, same content.

Run: python bench/bench_mime.py
"""

from __future__ import annotations

import email.policy
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from jetmail.messaging.mime import build_message, make_message_id

SUBJECT = "Ihre Bestellung A-10427 ist unterwegs \u2013 Grüße aus München"
TEXT = (
    "Hallo Jürgen,\n\ngute Nachricht: Die Bestellung A-10427 hat unser Lager verlassen.\n"
    "Sendung verfolgen: https://example.com/track/00340434161094022115\n\n"
    "Voraussichtliche Zustellung: 2025-03-18\n\n--\nBeispiel GmbH, Musterstraße 1, 10115 Berlin\n"
) * 3
HTML = (
    '<!DOCTYPE html><html lang="de"><head><meta charset="utf-8"></head><body style="margin: 0;">'
    + '<p style="margin: 0 0 16px;color: #1f2933;">Gute Nachricht: Die Bestellung <strong>A-10427</strong> '
    "hat unser Lager verlassen. Voraussichtliche Zustellung: 2025-03-18.</p>\n"
    * 20
    + '<p><a href="https://example.com/track/00340434161094022115" style="color: #2563eb;">Verfolgen</a></p>'
    + "</body></html>"
)
DATE = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def jetmail_build(i: int) -> bytes:
    return build_message(
        from_addr=("Beispiel Versand", "versand@example.com"),
        to=(f"Jürgen Kunde {i}", f"kunde{i}@example.org"),
        subject=SUBJECT,
        html=HTML,
        text=TEXT,
        message_id=make_message_id("example.com", f"m{i}"),
        date=DATE,
        headers={"List-Unsubscribe": f"<https://example.com/u/{i}>"},
    ).data


def stdlib_build(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Beispiel Versand <versand@example.com>"
    msg["To"] = f"Jürgen Kunde {i} <kunde{i}@example.org>"
    msg["Subject"] = SUBJECT
    msg["Date"] = format_datetime(DATE)
    msg["Message-ID"] = f"<m{i}@example.com>"
    msg["List-Unsubscribe"] = f"<https://example.com/u/{i}>"
    msg.set_content(TEXT)
    msg.add_alternative(HTML, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


def rate(build: Callable[[int], bytes], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            build(count)
            count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    size = len(jetmail_build(0))
    jetmail_rate = rate(jetmail_build, 3.0)
    stdlib_rate = rate(stdlib_build, 3.0)
    print(f"message size: {size} bytes (multipart/alternative, quoted-printable, encoded headers)")
    print(f"jetmail.messaging.mime.build_message: {jetmail_rate:>9,.0f} messages/s")
    print(f"stdlib EmailMessage (SMTP): {stdlib_rate:>9,.0f} messages/s")
    print(f"speed-up:                   {jetmail_rate / stdlib_rate:>9.1f}x")


if __name__ == "__main__":
    main()
