"""The plan job: stream a campaign's audience page by page and enqueue batches of ~100 recipients.

The audience is never loaded whole: members are read lazily from list memberships or segment
evaluation, filtered (exclusions, duplicates across sources, the suppression list), cut into batches and
published as jobs with deterministic ids ``cmpb.<campaign>.<run>.<n>``. Each batch is recorded in DynamoDB
(addresses and job payload) before it is enqueued. A second execution of the same plan (a crash, a
redelivery) first reads the batches recorded before (``already_planned``): they are enqueued again
unchanged (JetStream drops the ones it has seen as duplicates; the batch's lease and journal make a repeat
after the duplicate window harmless) and nobody in them is planned again. So a recipient is in one batch of
a run even when list membership changed between the two executions.

A planner may be given a range of addresses (``within``): it then plans only the members whose address is
in it, and the range's top may be lowered while it runs (the plan job hands the rest to another part,
``jetmail.campaigns.jobs``), never below an address it has planned (``last_planned``).

A batch holds at most 100 recipients and at most ``BATCH_BYTES`` of recipient data (attributes can be
8 KiB each), so its DynamoDB item stays far under the 400 KB item limit.

The first batch goes out as soon as its recipients are known: each source's first Query asks for one
batch's worth of members (``first_page``), later Queries ``PAGE_SIZE`` members, and the plan job
publishes its first chunk of one batch, doubling up to 50. Pages of a bounded count, not DynamoDB's
~1 MB (~3,000 members), keep every read of the plan short: the batches' own requests (their claims,
records and the suppression check) and the transactional messages' never queue long behind one. That is 0.33
Query per 100 recipients (a page of 1,000 held the local emulator for up to ~175 ms, one of 300 for ~50-90).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from jetmail.audience.model import AddressRange
from jetmail.campaigns.model import ABTest, AudienceSource, BatchRecipient, CampaignCreate

BATCH_SIZE = 100
PAGE_SIZE = 300  # members per Query after the first
BATCH_BYTES = 256_000  # of recipients as JSON: the batch item (addresses, details, failures) stays < 400 KB
PRIORITY_ORDER = {"high": 0, "normal": 1, "low": 2}


class Member(Protocol):
    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def language(self) -> str | None: ...
    @property
    def timezone(self) -> str | None: ...
    @property
    def attributes(self) -> dict[str, Any]: ...


class AudienceReader(Protocol):
    def iter_list_members(self, list_id: str, *, status: str = ..., page_size: int | None = ...,
                          first_page: int | None = ..., within: AddressRange | None = ...) -> Iterator[Member]: ...


class SegmentReader(Protocol):
    def iter_members(self, segment_id: str, *, page_size: int | None = ...,
                     first_page: int | None = ..., within: AddressRange | None = ...) -> Iterator[Member]: ...


class SuppressionReader(Protocol):
    def suppressed_among(self, emails: list[str]) -> dict[str, str]: ...


@dataclass(slots=True)
class PlannedBatch:
    number: int
    priority: str
    recipients: list[BatchRecipient]
    variant: str | None = None


def _digest(email: str) -> int:
    # 8 bytes per address keeps the de-duplication set small (a million members ≈ 60 MB worst case)
    return int.from_bytes(hashlib.blake2b(email.lower().encode(), digest_size=8).digest(), "big")


def ab_position(seed: int, email: str) -> float:
    """A reproducible uniform number in [0, 1) for the recipient: the seeded random split."""
    digest = hashlib.sha256(f"{seed}:{email.lower()}".encode()).digest()
    return int.from_bytes(digest[:7], "big") / float(1 << 56)


def ab_assignment(test: ABTest, email: str) -> str | None:
    """The variant a recipient tests, or None when they belong to the remaining audience."""
    share = test.test_percentage / 100.0
    u = ab_position(test.seed, email)
    if u >= share:
        return None
    index = min(int(u / share * len(test.variants)), len(test.variants) - 1)
    return test.variants[index].name


# split points are printable ASCII, so they compare the same way as strings here and as UTF-8 in DynamoDB:
# each character a digit of base 97 (0 for "nothing", 1-95 for " " to "~", 96 for anything above "~")
_DIGITS = 97
_WIDTH = 16


def _digits(address: str) -> int:
    value = 0
    for char in address[:_WIDTH].ljust(_WIDTH, "\x00"):
        code = ord(char)
        value = value * _DIGITS + (0 if code < 0x20 else min(code - 0x1F, 96))
    return value


def split_point(after: str, hi: str | None) -> str | None:
    """An address half-way between ``after`` and ``hi`` (None: the top of the address space), above the
    one and below the other, or None when there is no room between them."""
    top = _DIGITS ** _WIDTH if hi is None else _digits(hi)
    middle = (_digits(after) + top) // 2
    chars: list[str] = []
    for _ in range(_WIDTH):
        middle, digit = divmod(middle, _DIGITS)
        chars.append("" if digit == 0 else chr(digit + 0x1F))
    point = "".join(reversed(chars)).rstrip("\x00")
    if not point or point <= after or (hi is not None and point >= hi):
        return None
    return point


class Planner:
    def __init__(self, *, contacts: AudienceReader, segments: SegmentReader, suppressions: SuppressionReader,
                 batch_size: int = BATCH_SIZE, within: AddressRange | None = None) -> None:
        self.contacts = contacts
        self.segments = segments
        self.suppressions = suppressions
        self.batch_size = batch_size
        # the part of the address space this planner plans (a plan part's); its top may be lowered while it
        # runs, above every address planned so far (``last_planned``)
        self.within = within
        self.last_planned = ""
        self.excluded_suppressed = 0
        self._count = 0
        self._planned: set[int] = set()
        self._last = 0

    def already_planned(self, emails: Iterable[str], *, last_batch: int) -> None:
        """Recipients of batches an earlier execution of this plan recorded: nobody among them is planned
        again, and new batches are numbered after ``last_batch``."""
        self._planned.update(_digest(e) for e in emails)
        self._last = max(self._last, last_batch)

    def _members(self, source: AudienceSource, *, first_page: int | None = None) -> Iterator[Member]:
        if source.list_id is not None:
            return self.contacts.iter_list_members(source.list_id, status="subscribed", page_size=PAGE_SIZE,
                                                   first_page=first_page, within=self.within)
        assert source.segment_id is not None
        return self.segments.iter_members(source.segment_id, page_size=PAGE_SIZE, first_page=first_page,
                                          within=self.within)

    def batches(self, campaign: CampaignCreate, *, run: str, winner: str | None = None) -> Iterator[PlannedBatch]:
        """Batches for one run, numbered from 1: ``main`` (everyone), ``test`` (the A/B test share, by
        variant) or ``winner`` (everyone not in the test, with the ``winner`` variant)."""
        self._count = self._last
        excluded: set[int] = set()
        for source in campaign.exclusions:
            excluded.update(_digest(m.email) for m in self._members(source))
        seen = self._planned
        for source in sorted(campaign.audience, key=lambda s: PRIORITY_ORDER[s.priority]):
            # batches never mix sources (their priority differs) nor variants (their content differs)
            pending: dict[str | None, list[BatchRecipient]] = {}
            sizes: dict[str | None, int] = {}
            chunk: list[tuple[Member, str | None]] = []
            # a first read of one batch's worth: the first batch leaves before a 1 MB page is read
            within = self.within
            for member in self._members(source, first_page=self.batch_size):
                address = member.email.lower()
                if within is not None and address not in within:
                    continue  # read past a lowered top, or a source read whole
                key = _digest(member.email)
                if key in excluded or key in seen:
                    continue
                seen.add(key)
                variant: str | None = None
                if run in ("test", "winner") and campaign.ab_test is not None:
                    variant = ab_assignment(campaign.ab_test, member.email)
                    if (run == "test") == (variant is None):
                        continue
                    if run == "winner":
                        variant = winner
                chunk.append((member, variant))
                self.last_planned = max(self.last_planned, address)
                if len(chunk) >= self.batch_size:
                    yield from self._flush(chunk, pending, sizes, source)
                    chunk = []
            if chunk:
                yield from self._flush(chunk, pending, sizes, source)
            for variant, recipients in pending.items():
                if recipients:
                    yield PlannedBatch(number=self._next(), priority=source.priority, recipients=recipients,
                                       variant=variant)

    def _next(self) -> int:
        self._count += 1
        return self._count

    def _flush(self, chunk: list[tuple[Member, str | None]], pending: dict[str | None, list[BatchRecipient]],
               sizes: dict[str | None, int], source: AudienceSource) -> Iterator[PlannedBatch]:
        suppressed = self.suppressions.suppressed_among([m.email for m, _ in chunk])
        self.excluded_suppressed += len(suppressed)
        for member, variant in chunk:
            if member.email.lower() in suppressed:
                continue
            recipient = BatchRecipient(email=member.email, name=member.name or None,
                                       language=member.language or None, timezone=member.timezone or None,
                                       attributes=member.attributes or {}, list_id=source.list_id)
            bucket = pending.setdefault(variant, [])
            # the attributes are what can be large; the other fields are bounded by this margin
            size = 400 + (len(json.dumps(member.attributes, separators=(",", ":"))) if member.attributes else 0)
            if bucket and sizes.get(variant, 0) + size > BATCH_BYTES:
                yield PlannedBatch(number=self._next(), priority=source.priority, recipients=bucket, variant=variant)
                bucket = pending[variant] = []
                sizes[variant] = 0
            bucket.append(recipient)
            sizes[variant] = sizes.get(variant, 0) + size
            if len(bucket) >= self.batch_size:
                yield PlannedBatch(number=self._next(), priority=source.priority, recipients=bucket, variant=variant)
                pending[variant] = []
                sizes[variant] = 0
