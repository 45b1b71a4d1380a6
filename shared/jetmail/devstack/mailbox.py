"""Read what the local SMTP sink received."""

from __future__ import annotations

import email
import email.policy
import json
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Received:
    id: str
    mail_from: str
    rcpt_tos: list[str]
    received_at: float
    size: int


class Mailbox:
    """The sink's folder: an append-only ``index.jsonl`` plus one ``.eml`` per message."""

    def __init__(self, maildir: Path | str) -> None:
        self.maildir = Path(maildir)

    def entries(self) -> list[Received]:
        index = self.maildir / "index.jsonl"
        if not index.exists():
            return []
        out: list[Received] = []
        with index.open(encoding="utf-8") as fh:
            for line in fh:
                if line.endswith("\n"):  # a line still being written is skipped until complete
                    out.append(Received(**json.loads(line)))
        return out

    def count(self) -> int:
        return len(self.entries())

    def by_recipient(self) -> Counter[str]:
        return Counter(rcpt.lower() for entry in self.entries() for rcpt in entry.rcpt_tos)

    def for_recipient(self, address: str) -> list[Received]:
        address = address.lower()
        return [e for e in self.entries() if address in (r.lower() for r in e.rcpt_tos)]

    def raw(self, entry_id: str) -> bytes:
        return (self.maildir / f"{entry_id}.eml").read_bytes()

    def message(self, entry_id: str) -> EmailMessage:
        return email.message_from_bytes(self.raw(entry_id), policy=email.policy.default)

    def clear(self) -> None:
        for path in self.maildir.glob("*.eml"):
            path.unlink()
        index = self.maildir / "index.jsonl"
        if index.exists():
            index.write_text("")
