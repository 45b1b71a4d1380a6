"""Campaign rows in DynamoDB.

=====================  =======================  ==============================  ====================
item                   pk                       sk                              gsi1pk / gsi1sk
=====================  =======================  ==============================  ====================
campaign               ``CAMPAIGN#<id>``        ``META``                        ``CAMPAIGNS`` / created#id
planned batch          ``CAMPAIGN#<id>``        ``BATCH#<run>#<n:06d>``         -
batch failures         ``CAMPAIGN#<id>``        ``BATCH#<run>#<n:06d>``         - (its ``failures`` map)
parked batch           ``CAMPAIGN#<id>``        ``PARKED#<run>#<n:06d>``        -
plan part              ``CAMPAIGN#<id>``        ``PLANPART#<run>#<part>``       -
due start              ``CAMPAIGN#<id>``        ``DUE``                         ``DUE`` / at#id
=====================  =======================  ==============================  ====================

A/B variant counters and engagement counters live in the stats table (``jetmail.deliverability.feedback``).

Per-recipient rows are not written for campaign mail: the plan writes one item per batch of up to
100 addresses (25 batches per BatchWriteItem), and a campaign message id
(``cm_<campaign>_<run>_<batch>_<pos>``) names the batch item and the position in it, so finding
the recipient of a message is one GetItem; its send outcome is in its batch's journal on NATS
(``campaigns.signals``) and its later events are in the stats table. A batch item also keeps the rest of
its job's payload (``job``: priority, stop-event replay start, names and attributes), so a plan
re-executed after a crash enqueues it again unchanged. A finished batch adds its
counts to the campaign item in the same TransactWriteItems that writes the batch's ``SENT#`` mark in the
stats table (conditional on its absence), so a redelivered batch can never count twice.

Permanent failures (a provider's 5xx, ``gave up: ...`` after the last retry, ``cannot render: ...``)
are kept on their planned batch item as ``failures``: a map of position -> {reason, at}, written by
one UpdateItem only for a batch that has any, so a campaign without failures pays nothing. The
address is the batch's ``recipients[position]``. Listing them queries the ``BATCH#`` items with a
filter on ``failures``: one Query per ~300 batch items read (1 MB), returning those with failures.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jetmail.campaigns.ids import campaign_message_id
from jetmail.campaigns.model import (
    BatchCounts,
    BatchRecipient,
    CampaignCreate,
    CampaignFailure,
    CampaignFailurePage,
    CampaignState,
)
from jetmail.reporting.counters import Counters
from jetmail.storage import keys
from jetmail.storage.cursors import InvalidCursor, pack, unpack
from jetmail.storage.table import ConditionFailed, Table, key_values, resume_after

COUNTERS = ("total", "sent", "failed", "skipped")
# planned batch items per BatchWriteItem: each holds up to 100 recipients with their details (~9 KB here), and
# a request of 25 (~220 KB) held the local emulator for ~130 ms, every other request of the stack waiting
RECORDED_PER_REQUEST = 8


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class CampaignNotFound(LookupError):
    pass


class InvalidTransition(RuntimeError):
    """The campaign is not in a state that allows the action."""


class CampaignStore:
    def __init__(self, table: Table, *, stats: Table, retention_days: int = 400) -> None:
        self.table = table
        self.counters = Counters(stats)
        # planned and parked batches hold recipients' addresses (and failures): they expire like message records
        self.retention_s = retention_days * 86_400

    def create(self, campaign_id: str, body: CampaignCreate, *, parent_id: str | None = None,
               state: CampaignState = CampaignState.DRAFT) -> dict[str, Any]:
        created = now_iso()
        item = keys.campaign(campaign_id).item(
            gsi1pk=keys.CAMPAIGNS, gsi1sk=f"{created}#{campaign_id}",
            id=campaign_id, name=body.name, state=state.value, created_at=created,
            definition=body.model_dump_json(by_alias=True), parent_id=parent_id,
            total=0, sent=0, failed=0, skipped=0, batches_done=0, batches_planned=0,
            runs_planned=[], runs_expected=["main"] if body.ab_test is None else ["test"],
        )
        self.table.put(item, condition="attribute_not_exists(pk)")
        return item

    def get(self, campaign_id: str, *, consistent: bool = True) -> dict[str, Any]:
        item = self.table.get(*keys.campaign(campaign_id), consistent=consistent)
        if item is None:
            raise CampaignNotFound(f"campaign {campaign_id!r} not found")
        return item

    def definition(self, item: dict[str, Any]) -> CampaignCreate:
        return CampaignCreate.model_validate_json(item["definition"])

    def list(self, *, limit: int = 100) -> list[dict[str, Any]]:
        items, _ = self.table.query(pk=keys.CAMPAIGNS, index="gsi1", forward=False, limit=limit)
        return items

    def transition(self, campaign_id: str, to: CampaignState, *, allowed_from: set[CampaignState],
                   fields: dict[str, Any] | None = None, remove: tuple[str, ...] = ()) -> dict[str, Any]:
        names = {"#s": "state"}
        params: dict[str, Any] = {":to": to.value}
        sets = ["#s = :to", "updated_at = :now"]
        params[":now"] = now_iso()
        for i, (key, value) in enumerate((fields or {}).items()):
            names[f"#f{i}"] = key
            params[f":f{i}"] = value
            sets.append(f"#f{i} = :f{i}")
        placeholders = []
        for i, state in enumerate(sorted(s.value for s in allowed_from)):
            params[f":a{i}"] = state
            placeholders.append(f":a{i}")
        expression = "SET " + ", ".join(sets)
        if remove:
            names.update({f"#r{i}": key for i, key in enumerate(remove)})  # e.g. timezone is a reserved word
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
        try:
            return self.table.update(*keys.campaign(campaign_id), expression=expression, names=names,
                                     params=params,
                                     condition=f"attribute_exists(pk) AND #s IN ({', '.join(placeholders)})")
        except ConditionFailed:
            current = self.table.get(*keys.campaign(campaign_id), consistent=True)
            if current is None:
                raise CampaignNotFound(f"campaign {campaign_id!r} not found") from None
            raise InvalidTransition(
                f"campaign {campaign_id} is {current['state']}; cannot become {to.value}"
            ) from None

    def set_fields(self, campaign_id: str, **fields: Any) -> dict[str, Any]:
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        params = {f":f{i}": v for i, v in enumerate(fields.values())}
        expression = "SET " + ", ".join(f"#f{i} = :f{i}" for i in range(len(fields)))
        return self.table.update(*keys.campaign(campaign_id), expression=expression, names=names,
                                 params=params)

    # ---- a run's plan, in parts
    def open_plan_part(self, campaign_id: str, *, run: str, part: PlanPart) -> bool:
        """Record a part of a run's plan before its job is enqueued; False when it was recorded before."""
        try:
            self.table.put(keys.plan_part(campaign_id, run, part.id).item(
                lo=part.lo, hi=part.hi, parent=part.parent, budget=part.budget,
                expires_at=int(time.time()) + self.retention_s), condition="attribute_not_exists(pk)")
        except ConditionFailed:
            return False
        return True

    def plan_parts(self, campaign_id: str, *, run: str) -> builtins.list[PlanPart]:
        """Every part of a run's plan recorded so far: one Query."""
        prefix = keys.plan_parts_prefix(run)
        return [PlanPart(id=str(i["sk"]).removeprefix(prefix), lo=i["lo"], hi=i.get("hi"), parent=i.get("parent"),
                         budget=int(i.get("budget", 0)), done=bool(i.get("done")))
                for i in self.table.query_all(pk=keys.campaign_partition(campaign_id), sk_prefix=prefix)]

    def start_plan_part(self, campaign_id: str, *, run: str, part: str) -> bool:
        """Mark a part's execution as begun; True when an earlier execution had begun it already (and may
        have recorded batches)."""
        try:
            self.table.update(*keys.plan_part(campaign_id, run, part), expression="SET started = :t",
                              params={":t": True}, condition="attribute_exists(pk) AND attribute_not_exists(started)")
        except ConditionFailed:
            return True
        return False

    def number_batches(self, campaign_id: str, *, run: str, count: int, after: int = 0) -> int:
        """Reserve ``count`` batch numbers of a run, unique across all its plan parts; returns the first.
        ``after``: a number already in use (a batch recorded before numbers were reserved here)."""
        counter = f"numbered_{run}"
        if after:
            try:
                self.table.update(*keys.campaign(campaign_id), expression="SET #n = :a", names={"#n": counter},
                                  params={":a": after}, condition="attribute_not_exists(#n) OR #n < :a")
            except ConditionFailed:
                pass  # numbered past it already
        item = self.table.update(*keys.campaign(campaign_id), expression="ADD #n :c", names={"#n": counter},
                                 params={":c": count})
        return int(item[counter]) - count + 1

    def finish_plan_part(self, campaign_id: str, *, run: str, part: str, total: int, batches: int) -> bool:
        """Add a finished part's size and batch count to the campaign, once, and mark the run planned when
        every part of it has finished. Returns whether the run is now planned."""
        try:
            self.table.transact([
                self.table.update_op(*keys.plan_part(campaign_id, run, part),
                                     expression="SET done = :t, planned = :total, batches = :b",
                                     params={":t": True, ":total": total, ":b": batches},
                                     condition="attribute_exists(pk) AND attribute_not_exists(done)"),
                self.table.update_op(*keys.campaign(campaign_id), expression="ADD #t :total, batches_planned :b",
                                     names={"#t": "total"}, params={":total": total, ":b": batches}),
            ])
        except ConditionFailed:
            pass  # an earlier execution of this part finished it
        # a part is recorded before its job is enqueued, so no part still planning can be missing here
        if not all(p.done for p in self.plan_parts(campaign_id, run=run)):
            return False
        try:
            self.table.update(*keys.campaign(campaign_id),
                              expression="SET runs_planned = list_append(runs_planned, :run)",
                              params={":run": [run], ":r": run}, condition="NOT contains(runs_planned, :r)")
        except ConditionFailed:
            pass  # another part saw it first
        return True

    # ---- batches
    def record_batches(self, campaign_id: str, *, run: str, batches: builtins.list[BatchRecord]) -> int:
        """Write planned batches 25 per request; returns requests made. Each item keeps its addresses
        (``recipients``, what message ids and failures resolve against) and, in ``job``, the rest of what
        its batch job carries (each recipient's compact form without its address), so a re-executed plan
        can enqueue it again unchanged."""
        expires_at = int(time.time()) + self.retention_s
        return self.table.batch_put(per_request=RECORDED_PER_REQUEST, items=[
            keys.batch(campaign_id, run, b.number).item(
                variant=b.variant, recipients=[r.email for r in b.recipients], expires_at=expires_at,
                job=json.dumps({"priority": b.priority, "stops_from": b.stops_from,
                                "details": [_details(r) for r in b.recipients]}, separators=(",", ":")))
            for b in batches
        ])

    def recorded_batches(self, campaign_id: str, *, run: str) -> Iterator[builtins.list[BatchRecord]]:
        """The batches recorded for a run, a Query page (~1 MB) at a time, in batch order."""
        start: dict[str, Any] | None = None
        while True:
            items, start = self.table.query(pk=keys.campaign_partition(campaign_id), sk_prefix=keys.batches_prefix(run),
                                            start=start)
            if items:
                yield [_batch_record(item) for item in items]
            if not start:
                return

    def finish_batch(self, campaign_id: str, *, run: str, batch: int, counts: BatchCounts,
                     variant: str | None = None, failures: dict[int, str] | None = None) -> bool:
        """Add a batch's counts to the campaign and the send counters once, in one TransactWriteItems:
        the batch's ``SENT#`` mark in the stats table rides in it (written even when every recipient was
        skipped), so a redelivered batch can never count twice. The mark is an item of its own, not a
        member of a set on the campaign item: the campaign item, updated once per batch, stays the same
        size however many batches the campaign has (DynamoDB bills and throttles a write by the item's
        size). False when it was counted before.

        ``failures`` (position -> reason) are kept on the batch item in the same transaction, so a
        ``failed`` count on the campaign always has its rows to show."""
        mark = f"{run}#{batch}"
        ops = [self.table.update_op(
            *keys.campaign(campaign_id),
            expression="ADD sent :s, failed :f, skipped :k, batches_done :one",
            params={":s": counts.sent, ":f": counts.failed, ":k": counts.skipped, ":one": 1, ":m": mark},
            # a batch counted while marks were kept in this set on the campaign item
            condition="NOT contains(done_batches, :m)",
        )]
        if failures:
            ops.append(self._failures_op(campaign_id, run=run, batch=batch, failures=failures))
        return self.counters.record_sends(f"{campaign_id}#{mark}", sent=counts.sent, failed=counts.failed,
                                          campaign_id=campaign_id, variant=variant, with_ops=ops, once=True)

    def batch(self, campaign_id: str, *, run: str, batch: int) -> dict[str, Any] | None:
        return self.table.get(*keys.batch(campaign_id, run, batch))

    def batch_record(self, campaign_id: str, *, run: str, batch: int) -> BatchRecord | None:
        """A planned batch with its recipients' details (what a view-in-browser copy renders from)."""
        item = self.batch(campaign_id, run=run, batch=batch)
        return _batch_record(item) if item is not None else None

    # ---- permanent failures
    def _failures_op(self, campaign_id: str, *, run: str, batch: int, failures: dict[int, str]) -> dict[str, Any]:
        """Keep a batch's failed recipients (position -> reason) on its item. A redelivered batch writes
        nothing new: the first record stands, with the reasons and time it saw."""
        at = now_iso()
        return self.table.update_op(
            *keys.batch(campaign_id, run, batch),
            expression="SET failures = if_not_exists(failures, :f)",
            params={":f": {str(pos): {"reason": reason, "at": at} for pos, reason in failures.items()}},
        )

    def failures(self, campaign_id: str, *, limit: int = 100, cursor: str | None = None,
                 max_queries: int = 10) -> CampaignFailurePage:
        """Up to ``limit`` failed recipients after ``cursor``, in batch then position order.

        One Query per ~300 batch items (the filter drops batches without failures), at most
        ``max_queries`` per page, plus one GetItem to finish the batch a previous page stopped in.
        The cursor names the last batch read and the last position returned in it (none when the
        whole batch was), so no failure is skipped or repeated across pages. Does not check that the
        campaign exists; raises InvalidCursor for a cursor this method did not return."""
        pk = keys.campaign_partition(campaign_id)
        found: list[CampaignFailure] = []
        start: dict[str, Any] | None = None
        if cursor:
            sk, after = _decode_failure_cursor(cursor, campaign_id=campaign_id)
            if after is not None:
                item = self.table.get(pk, sk)
                found += _failure_rows(campaign_id, item, after=after) if item else []
            start = resume_after({"pk": pk, "sk": sk})
        queries = 0
        while len(found) <= limit:
            if queries == max_queries and start:
                # the query cap came first: the next page carries on after the last batch read
                return CampaignFailurePage(failures=found, next_cursor=_encode_failure_cursor(
                    campaign_id, str(key_values(start)["sk"]), None))
            items, start = self.table.query(pk=pk, sk_prefix=keys.BATCH_PREFIX, start=start,
                                            filter="attribute_exists(#fl)", names={"#fl": "failures"})
            queries += 1
            for item in items:
                found += _failure_rows(campaign_id, item)
                if len(found) > limit:
                    break
            if not start:
                break
        if len(found) <= limit:
            return CampaignFailurePage(failures=found)
        page = found[:limit]
        tail = page[-1]
        return CampaignFailurePage(failures=page, next_cursor=_encode_failure_cursor(
            campaign_id, keys.batch_sk(tail.run, tail.batch), tail.position))

    def park(self, campaign_id: str, *, run: str, batch: int, payload: dict[str, Any], park_id: str) -> None:
        self.table.put(keys.parked_batch(campaign_id, run, batch).item(
            payload=json.dumps(payload), park_id=park_id, parked_at=now_iso(),
            expires_at=int(time.time()) + self.retention_s))

    def parked(self, campaign_id: str) -> builtins.list[dict[str, Any]]:
        return list(self.table.query_all(pk=keys.campaign_partition(campaign_id), sk_prefix=keys.PARKED_PREFIX))

    def unpark(self, campaign_id: str, sk: str) -> None:
        self.table.delete(keys.campaign_partition(campaign_id), sk)

    # ---- A/B variants
    def variant_counters(self, campaign_id: str) -> dict[str, dict[str, Any]]:
        return self.counters.variants(campaign_id)

    def add_variant_engagement(self, campaign_id: str, variant: str, *, opened: int = 0, clicked: int = 0) -> None:
        self.counters.add_variant_engagement(campaign_id, variant, opened=opened, clicked=clicked)

    # ---- scheduling
    def mark_due(self, campaign_id: str, at: datetime) -> None:
        stamp = at.astimezone(UTC).isoformat()
        self.table.put(keys.campaign_due(campaign_id).item(gsi1pk=keys.DUE, gsi1sk=f"{stamp}#{campaign_id}",
                                                          campaign_id=campaign_id, at=stamp))

    def clear_due(self, campaign_id: str) -> None:
        self.table.delete(*keys.campaign_due(campaign_id))

    def due(self, now: datetime) -> builtins.list[str]:
        """Campaigns whose start time has come (one Query on the DUE index)."""
        stamp = now.astimezone(UTC).isoformat()
        return [i["campaign_id"] for i in self.table.query_all(pk=keys.DUE, index="gsi1") if i["gsi1sk"] <= stamp]

    def in_state(self, state: CampaignState) -> builtins.list[dict[str, Any]]:
        return [i for i in self.table.query_all(pk=keys.CAMPAIGNS, index="gsi1") if i.get("state") == state.value]


#: The part of a run's plan the campaign's own plan job plans: the whole address range, until it hands some over.
ROOT_PART = "root"


@dataclass(frozen=True, slots=True)
class PlanPart:
    """A part of a run's plan: the audience members whose address (lower case) is in ``[lo, hi)`` (``hi``
    None: no upper end). ``parent`` is the part that handed it over; ``budget`` how many further parts it
    may hand over in turn."""

    id: str
    lo: str
    hi: str | None
    parent: str | None = None
    budget: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A planned batch as its job carries it."""

    number: int
    variant: str | None
    recipients: list[BatchRecipient]
    priority: str = "normal"
    stops_from: str | None = None


def _batch_record(item: dict[str, Any]) -> BatchRecord:
    _, number = keys.batch_of(item["sk"])
    addresses = item.get("recipients") or []
    # an item recorded before batch items kept their jobs: addresses only, every stop event replayed
    job = json.loads(item["job"]) if item.get("job") else {"details": [{} for _ in addresses]}
    return BatchRecord(number=number, variant=item.get("variant"),
                       recipients=[BatchRecipient.model_validate({**d, "e": e})
                                   for e, d in zip(addresses, job["details"], strict=True)],
                       priority=job.get("priority") or "normal", stops_from=job.get("stops_from"))


def _details(recipient: BatchRecipient) -> dict[str, Any]:
    """A recipient's compact form without its address, which the batch item keeps in ``recipients``."""
    details = recipient.model_dump()
    del details["e"]
    return details


def _failure_rows(campaign_id: str, item: dict[str, Any], *, after: int = -1) -> list[CampaignFailure]:
    run, number = keys.batch_of(item["sk"])
    recipients = item.get("recipients") or []
    rows = []
    for key, failure in sorted((item.get("failures") or {}).items(), key=lambda kv: int(kv[0])):
        pos = int(key)
        if pos <= after:
            continue
        rows.append(CampaignFailure(
            email=recipients[pos] if pos < len(recipients) else "", reason=failure["reason"], run=run,
            batch=number, position=pos, message_id=campaign_message_id(campaign_id, run, number, pos),
            at=failure["at"]))
    return rows


def _encode_failure_cursor(campaign_id: str, sk: str, position: int | None) -> str:
    return pack({"c": campaign_id, "b": sk, "p": position})


def _decode_failure_cursor(cursor: str, *, campaign_id: str) -> tuple[str, int | None]:
    value = unpack(cursor)
    if not isinstance(value, dict) or set(value) != {"c", "b", "p"}:
        raise InvalidCursor("cursor is not one this API returned")
    if value["c"] != campaign_id:
        raise InvalidCursor("cursor does not belong to this campaign")
    sk, position = value["b"], value["p"]
    if (not isinstance(sk, str) or not keys.BATCH_SK.fullmatch(sk)
            or not (position is None or (type(position) is int and position >= 0))):
        raise InvalidCursor("cursor is not one this API returned")
    return sk, position
