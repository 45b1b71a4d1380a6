"""The global suppression list: addresses jetmail never mails (or never mails marketing to).

Row: ``SUPP#<address>`` / ``SUPP`` with reason, source and time; gsi1 ``SUPPRESSIONS`` / time (newest
first listings). Every change is also published as a stop event (``jetmail.deliverability.stops``) before it is written:
running campaigns follow those events instead of reading this list per recipient.

An erased address (``jetmail.compliance.gdpr``) is kept only as its keyed pseudonym: ``SUPP#ERASED`` /
``<hmac>``, reason ``erased``. The address cannot be read back from it, yet every check below
(a send, a campaign plan, a running batch) recognises the address and refuses it. All pseudonyms
share one partition, so a planner loads them in one Query instead of one read per recipient.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from jetmail.deliverability.stops import SCOPE_ALL, SCOPE_ERASED, StopChange, StopFeed
from jetmail.storage import keys
from jetmail.storage.cursors import InvalidCursor, pack, unpack
from jetmail.storage.table import Table, resume_after
from jetmail.webhooks import DISABLED, WebhookSink, suppression_event

if TYPE_CHECKING:
    from jetmail.compliance.audit import AuditLog

Reason = Literal["hard_bounce", "soft_bounce_limit", "spam_complaint", "unsubscribed", "manual",
                 "account_suppression_list", "erased"]
# These block every message, transactional included; the others block marketing only.
BLOCKS_ALL: frozenset[str] = frozenset({"hard_bounce", "soft_bounce_limit", "spam_complaint",
                                        "account_suppression_list", "erased", "manual"})
PSEUDONYM_PREFIX = "hmac:"


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


class SuppressionPage(BaseModel):
    items: list[Suppression]
    next_cursor: str | None = None  # None: no older suppression follows


class Pseudonymizer:
    """HMAC-SHA256 of a lower-cased address under a secret key: the same address always gives the
    same pseudonym, and without the key a pseudonym cannot be tested against guessed addresses."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        # a key of its own, so the pseudonyms never equal any signature made with the signing secret
        self._key = hmac.new(raw, b"jetmail address pseudonym v1", hashlib.sha256).digest()

    def digest(self, email: str) -> str:
        return hmac.digest(self._key, email.strip().lower().encode(), "sha256").hex()

    def pseudonym(self, email: str) -> str:
        return PSEUDONYM_PREFIX + self.digest(email)


#: Queries a plan may spend reading the whole suppression list before it falls back to asking per address.
PLAN_LIST_PAGES = 4


class SuppressionStore:
    def __init__(self, table: Table, *, recent_ttl_s: float = 2.0, pseudonyms: Pseudonymizer | None = None,
                 audit: AuditLog | None = None, stops: StopFeed | None = None,
                 webhooks: WebhookSink = DISABLED) -> None:
        self.table = table
        self.webhooks = webhooks
        self.recent_ttl_s = recent_ttl_s
        self.pseudonyms = pseudonyms
        self.audit = audit
        self.stops = stops
        self._erased: frozenset[str] = frozenset()
        self._erased_checked = -float("inf")
        self._lock = threading.Lock()

    def add(self, email: str, *, reason: Reason, source: str = "api") -> Suppression:
        entry = Suppression(email=email.lower(), reason=reason, source=source, created_at=datetime.now(UTC).isoformat())
        self._publish(StopChange(entry.email, SCOPE_ALL, reason=reason))
        self.table.put(keys.suppression(entry.email).item(gsi1pk=keys.SUPPRESSIONS,
                                                          gsi1sk=keys.by_time(entry.created_at, entry.email),
                                                          **entry.model_dump()))
        if self.audit is not None and _managed(source):
            self.audit.record("suppression.added", target=self._target(entry.email),
                              changes={"reason": reason, "source": source})
        self.webhooks.emit([suppression_event(entry.email, reason=reason, source=source, at=entry.created_at)])
        return entry

    def add_erased(self, email: str, *, source: str = "erasure") -> Suppression:
        """Keep only the address's pseudonym, suppressed for good, and drop its plain entry."""
        if self.pseudonyms is None:
            raise RuntimeError("erasure needs a SuppressionStore made with pseudonyms")
        digest = self.pseudonyms.digest(email)
        self._publish(StopChange(email, SCOPE_ERASED, reason="erased"))
        entry = Suppression(email=PSEUDONYM_PREFIX + digest, reason="erased", source=source,
                            created_at=datetime.now(UTC).isoformat())
        self.table.put(keys.erased(digest).item(gsi1pk=keys.SUPPRESSIONS,
                                                gsi1sk=keys.by_time(entry.created_at, entry.email),
                                                **entry.model_dump()))
        self.table.delete(*keys.suppression(email.lower()))
        with self._lock:  # this process refuses the address at once, others within ``recent_ttl_s``
            self._erased = self._erased | {digest}
        return entry

    def get(self, email: str) -> Suppression | None:
        """The erased entry of the address's pseudonym (it blocks everything, whatever was added since),
        else the address's own entry: one request either way."""
        own = keys.suppression(email.lower())
        wanted = [own]
        if self.pseudonyms is not None:
            wanted.append(keys.erased(self.pseudonyms.digest(email)))
        items = {item["pk"]: item for item in self.table.batch_get(wanted)}
        item = items.get(keys.ERASED) or items.get(own.pk)
        return Suppression.model_validate(item) if item else None

    def unlisted_checks(self, email: str) -> list[dict[str, Any]]:
        """TransactWriteItems ConditionChecks that hold while the address has neither of the entries ``get``
        reads (its own, its pseudonym's erased one): a write made with them is the read and the write at once."""
        wanted = [keys.suppression(email.lower())]
        if self.pseudonyms is not None:
            wanted.append(keys.erased(self.pseudonyms.digest(email)))
        return [self.table.check_op(*key, condition="attribute_not_exists(pk)") for key in wanted]

    def remove(self, email: str) -> bool:
        """Lift the address's own entry; an erasure is never lifted (it is not the address's to lift)."""
        if self.table.get(*keys.suppression(email.lower())) is None:
            return False
        self._publish(StopChange(email.lower(), SCOPE_ALL, stop=False))
        self.table.delete(*keys.suppression(email.lower()))
        if self.audit is not None:
            self.audit.record("suppression.removed", target=self._target(email))
        return True

    def list(self, *, limit: int = 100, start: dict[str, Any] | None = None
             ) -> tuple[list[Suppression], dict[str, Any] | None]:
        items, last = self.table.query(pk=keys.SUPPRESSIONS, index="gsi1", forward=False, limit=limit, start=start)
        return [Suppression.model_validate(i) for i in items], last

    def page(self, *, limit: int = 100, cursor: str | None = None) -> SuppressionPage:
        """Up to ``limit`` suppressions, newest first, after ``cursor`` (a ``next_cursor`` of an earlier
        page). One more is read than shown, so ``next_cursor`` is set only when an older one exists and
        the last page never links to an empty one. Raises InvalidCursor for a cursor this did not return."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        start = _decode_cursor(cursor) if cursor else None
        items, _ = self.table.query(pk=keys.SUPPRESSIONS, index="gsi1", forward=False, limit=limit + 1, start=start)
        shown = items[:limit]
        return SuppressionPage(items=[Suppression.model_validate(i) for i in shown],
                               next_cursor=_encode_cursor(shown[-1]) if len(items) > limit else None)

    def suppressed_among(self, emails: Iterable[str]) -> dict[str, str]:
        """{address: reason} for the suppressed ones among ``emails``: one BatchGetItem per 100, and the
        erased pseudonyms (one Query, refreshed at most every ``recent_ttl_s``)."""
        wanted = sorted({e.lower() for e in emails})
        rows = [keys.suppression(e) for e in wanted]
        found = {item["email"]: item["reason"] for item in self.table.batch_get(rows, projection=("email", "reason"))}
        erased = self.erased_digests()
        if erased and self.pseudonyms is not None:
            found.update({e: "erased" for e in wanted if self.pseudonyms.digest(e) in erased})
        return found

    def listed(self, *, max_pages: int) -> dict[str, str] | None:
        """{address: reason} of the whole suppression list, from its index in at most ``max_pages`` Queries
        (~1 MB each: some ten thousand entries); None when the list is longer than that. Erased addresses
        are not in it (only their pseudonyms are kept): ask :meth:`erased_among`."""
        found: dict[str, str] = {}
        start: dict[str, Any] | None = None
        for _ in range(max_pages):
            items, start = self.table.query(pk=keys.SUPPRESSIONS, index="gsi1", start=start,
                                            projection=("email", "reason"))
            found.update((str(i["email"]).lower(), str(i["reason"])) for i in items
                         if not str(i["email"]).startswith(PSEUDONYM_PREFIX))
            if not start:
                return found
        return None

    def for_plan(self, *, max_pages: int = PLAN_LIST_PAGES) -> PlanSuppressions:
        """What a campaign plan checks its audience against (see :class:`PlanSuppressions`)."""
        return PlanSuppressions(self, max_pages=max_pages)

    def erased_among(self, emails: Iterable[str]) -> set[str]:
        """The erased ones among ``emails`` (lower-cased): one Query at most every ``recent_ttl_s``."""
        erased = self.erased_digests()
        if not erased or self.pseudonyms is None:
            return set()
        return {e.lower() for e in emails if self.pseudonyms.digest(e) in erased}

    def erased_digests(self) -> frozenset[str]:
        with self._lock:
            if time.monotonic() - self._erased_checked >= self.recent_ttl_s:
                self._erased = frozenset(i["sk"] for i in self.table.query_all(pk=keys.ERASED))
                self._erased_checked = time.monotonic()
            return self._erased

    def _publish(self, change: StopChange) -> None:
        if self.stops is not None:
            self.stops.publish([change])

    def _target(self, email: str) -> str:
        return self.pseudonyms.pseudonym(email) if self.pseudonyms is not None else "address"


# ---- cursors: the index key of the last entry shown, checked on the way back in
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _encode_cursor(item: Mapping[str, Any]) -> str:
    return pack({"t": item["gsi1sk"], "k": item["pk"], "s": item["sk"]})


def _decode_cursor(cursor: str) -> dict[str, Any]:
    value = unpack(cursor)
    if not isinstance(value, dict) or set(value) != {"t", "k", "s"} or not all(
            isinstance(v, str) for v in value.values()):
        raise InvalidCursor("cursor is not one this list returned")
    at, pk, sk = value["t"], value["k"], value["s"]
    # the entry's own key and its index key name the same entry (gsi1sk is ``<time>#<address or pseudonym>``)
    if pk == keys.ERASED:
        valid = bool(_DIGEST.fullmatch(sk)) and at.endswith(f"#{PSEUDONYM_PREFIX}{sk}")
    else:
        address = pk.removeprefix(keys.SUPPRESSION_PREFIX)
        valid = bool(address) and keys.suppression(address) == (pk, sk) and at.endswith(f"#{address}")
    if not valid or not _timestamp(at.partition("#")[0]):
        raise InvalidCursor("cursor is not one this list returned")
    return resume_after({"gsi1pk": keys.SUPPRESSIONS, "gsi1sk": at, "pk": pk, "sk": sk})


def _timestamp(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _managed(source: str) -> bool:
    """An operator's action (API key or CLI), not feedback from the provider or a recipient."""
    return source == "cli" or source.startswith("api:")


class PlanSuppressions:
    """The suppression list as one campaign plan reads it: the whole list once, on first use, when it fits
    in ``max_pages`` Queries, then every chunk of the audience answered from it; otherwise one
    BatchGetItem per 100 addresses (:meth:`SuppressionStore.suppressed_among`). Either way erased
    addresses come from their pseudonyms. A plan reads it after the start of the stop events its batches
    replay, so nothing suppressed after this read reaches anyone."""

    def __init__(self, store: SuppressionStore, *, max_pages: int) -> None:
        self.store = store
        self.max_pages = max_pages
        self._listed: dict[str, str] | None = None
        self._read = False

    def suppressed_among(self, emails: list[str]) -> dict[str, str]:
        if not self._read:
            self._listed = self.store.listed(max_pages=self.max_pages)
            self._read = True
        if self._listed is None:
            return self.store.suppressed_among(emails)
        wanted = {e.lower() for e in emails}
        found = {e: self._listed[e] for e in wanted if e in self._listed}
        found.update(dict.fromkeys(self.store.erased_among(wanted), "erased"))
        return found
