"""The global suppression list: addresses jetmail never mails (or never mails marketing to).

Row: ``SUPP#<address>`` / ``SUPP`` with reason, source and time; gsi1 ``SUPPRESSIONS`` / time so
"suppressed since T" is one Query (the send-time check that catches what changed after a plan).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from jetmail.storage.table import Table, from_item, to_item

Reason = Literal["hard_bounce", "soft_bounce_limit", "spam_complaint", "unsubscribed", "manual",
                 "account_suppression_list", "erased"]
# These block every message, transactional included; the others block marketing only.
BLOCKS_ALL: frozenset[str] = frozenset({"hard_bounce", "soft_bounce_limit", "spam_complaint",
                                        "account_suppression_list", "erased", "manual"})
BATCH_GET_MAX = 100


class Suppression(BaseModel):
    email: str
    reason: Reason
    source: str = "api"
    created_at: str

    @property
    def blocks_transactional(self) -> bool:
        return self.reason in BLOCKS_ALL


def blocks(reason: str, *, category: str) -> bool:
    return category == "marketing" or reason in BLOCKS_ALL


class SuppressionStore:
    def __init__(self, table: Table, *, recent_ttl_s: float = 2.0) -> None:
        self.table = table
        self.recent_ttl_s = recent_ttl_s
        self._recent: dict[str, str] = {}
        self._recent_checked = 0.0
        self._recent_since = datetime.now(UTC).isoformat()
        self._lock = threading.Lock()

    def add(self, email: str, *, reason: Reason, source: str = "api") -> Suppression:
        entry = Suppression(email=email.lower(), reason=reason, source=source, created_at=datetime.now(UTC).isoformat())
        self.table.put({"pk": f"SUPP#{entry.email}", "sk": "SUPP", "gsi1pk": "SUPPRESSIONS",
                        "gsi1sk": f"{entry.created_at}#{entry.email}", **entry.model_dump()})
        return entry

    def get(self, email: str) -> Suppression | None:
        item = self.table.get(f"SUPP#{email.lower()}", "SUPP")
        return Suppression.model_validate(item) if item else None

    def remove(self, email: str) -> bool:
        if self.get(email) is None:
            return False
        self.table.delete(f"SUPP#{email.lower()}", "SUPP")
        return True

    def list(self, *, limit: int = 100, start: dict[str, Any] | None = None
             ) -> tuple[list[Suppression], dict[str, Any] | None]:
        items, last = self.table.query(pk="SUPPRESSIONS", index="gsi1", forward=False, limit=limit, start=start)
        return [Suppression.model_validate(i) for i in items], last

    def suppressed_among(self, emails: Iterable[str]) -> dict[str, str]:
        """{address: reason} for the suppressed ones among ``emails``: one BatchGetItem per 100."""
        wanted = sorted({e.lower() for e in emails})
        found: dict[str, str] = {}
        for offset in range(0, len(wanted), BATCH_GET_MAX):
            keys = [to_item({"pk": f"SUPP#{e}", "sk": "SUPP"}) for e in wanted[offset:offset + BATCH_GET_MAX]]
            request: dict[str, Any] = {self.table.name: {"Keys": keys, "ProjectionExpression": "email, reason"}}
            delay = 0.05
            while request:
                resp = self.table.client.batch_get_item(RequestItems=request)
                self.table.requests += 1
                for raw in resp.get("Responses", {}).get(self.table.name, []):
                    item = from_item(raw)
                    found[item["email"]] = item["reason"]
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
        return found

    def recently_suppressed(self) -> dict[str, str]:
        """Suppressions added since this process started watching, refreshed at most every
        ``recent_ttl_s``: one Query per refresh for the whole process, however many sends ask."""
        with self._lock:
            if time.monotonic() - self._recent_checked >= self.recent_ttl_s:
                for item in self.table.query_all(pk="SUPPRESSIONS", index="gsi1", sk_after=self._recent_since):
                    self._recent[item["email"]] = item["reason"]
                    self._recent_since = max(self._recent_since, item["gsi1sk"])
                self._recent_checked = time.monotonic()
            return dict(self._recent)
