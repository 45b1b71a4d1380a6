"""The counters in the stats table: every figure a report or the reputation monitor shows.

Rows (keys made in ``jetmail.storage.keys``): the account's days and hours, ``STATS`` /
``DAY#<date>`` and ``HOUR#<yyyy-mm-ddThh>``; a campaign's ``CAMPAIGN#<id>`` / ``TOTALS``, its hours
``HOUR#…``, its A/B variants ``VARIANT#<name>``, its links ``LINK#<index>``, and the country and mail
client of its first opens and clicks ``COUNTRY#<cc>`` / ``DEVICE#<family>``; and the ``SENT#<key>``
mark that lets a send be counted once. Counters only grow (ADD), each exactly once: an event's are
operations of the transaction that records the event (``jetmail.deliverability.feedback``), a send's ride with their
``SENT#`` mark and the caller's own record of the outcome. Reading costs a fixed number of requests,
whatever the number of recipients and events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from jetmail.deliverability.events import DeliveryEvent, EventKind
from jetmail.deliverability.useragents import country_code, mail_client
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table

Granularity = Literal["day", "hour"]
SEND_MARK_DAYS = 30
AB_COUNTERS = {"open_human_unique": "opened", "click_human_unique": "clicked"}  # what a variant counts


@dataclass(slots=True)
class CampaignCounters:
    """Every counter row of one campaign, as stored, by kind."""

    totals: dict[str, Any] = field(default_factory=dict)
    hours: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (yyyy-mm-ddThh, row), oldest first
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    countries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    devices: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Counters:
    """Reads and writes the counter rows; method docstrings give request counts."""

    def __init__(self, stats: Table) -> None:
        self.stats = stats

    # ---- writing
    def _rows(self, at: datetime, campaign_id: str | None, variant: str | None) -> list[keys.Key]:
        """What a send or an event at ``at`` counts in: the account's day and hour, and for a campaign its
        totals, its hour and its variant."""
        at = at.astimezone(UTC)
        hour = at.strftime("%Y-%m-%dT%H")
        rows = [keys.account_counter(keys.day(at.date().isoformat())), keys.account_counter(keys.hour(hour))]
        if campaign_id:
            rows += [keys.campaign_counter(campaign_id, keys.TOTALS),
                     keys.campaign_counter(campaign_id, keys.hour(hour))]
            if variant:
                rows.append(keys.campaign_counter(campaign_id, keys.variant(variant)))
        return rows

    def record_sends(self, key: str, *, sent: int, failed: int = 0, campaign_id: str | None = None,
                     variant: str | None = None, at: datetime | None = None,
                     with_ops: Sequence[dict[str, Any]] = (), once: bool = False) -> bool:
        """Add the sends and failures of one campaign batch or one message, once per ``key``: a
        ``SENT#<key>`` mark rides in the same TransactWriteItems. False when it was counted before.
        ``once``: the mark is written even when nothing is sent or failed, so ``with_ops`` apply once per
        ``key`` too (a campaign batch whose recipients were all skipped still counts once).

        Account-wide days and hours, and for a campaign its totals, its hour and its variant, so a
        report's timeline shows sends per hour next to the events. ``with_ops`` (``put_op`` /
        ``update_op`` operations, on any table) ride in the same transaction: the caller's own record of
        the outcome, so outcome and counters are written together or not at all, in one request."""
        counted = sent > 0 or failed > 0
        if not counted and not once:
            if not with_ops:
                return False
            try:
                self.stats.transact(list(with_ops))
            except ConditionFailed:
                return False
            return True
        at = (at or datetime.now(UTC)).astimezone(UTC)
        mark = keys.send_mark(key).item(expires_at=int(at.timestamp()) + SEND_MARK_DAYS * 86400)
        ops = [self.stats.put_op(mark, condition="attribute_not_exists(pk)")]
        if counted:
            ops += [self.stats.update_op(*row, expression="ADD sent :s, failed :f",
                                         params={":s": sent, ":f": failed})
                    for row in self._rows(at, campaign_id, variant)]
        ops += with_ops
        try:
            self.stats.transact(ops)
        except ConditionFailed:
            return False
        return True

    def event_ops(self, event: DeliveryEvent, names: Sequence[str], *, campaign_id: str | None,
                  variant: str | None) -> list[dict[str, Any]]:
        """What an event adds, as operations of the transaction that records it: each of ``names`` +1 on
        the account's day and hour and the campaign's totals and hour; on its variant only the A/B metric
        (unique human opens and clicks, as ``opened`` / ``clicked``); a click on the link's counter; and,
        with unique counters among ``names``, those on the country and mail client it came from."""
        if not names:
            return []
        ops = []
        for row in self._rows(event.occurred_at, campaign_id, variant):
            counted = list(names)
            if row.sk.startswith(keys.VARIANT_PREFIX):
                counted = [AB_COUNTERS[n] for n in names if n in AB_COUNTERS]
                if not counted:
                    continue
            ops.append(self._add_op(row, counted))
        if event.kind == EventKind.CLICK and event.link_index is not None and campaign_id:
            ops.append(self.stats.update_op(*keys.campaign_counter(campaign_id, keys.link(event.link_index)),
                                            expression="ADD clicks :one, human_clicks :h SET #u = :u",
                                            names={"#u": "url"},
                                            params={":one": 1, ":h": 0 if event.machine else 1,
                                                    ":u": event.link_url or ""}))
        unique = [n for n in names if n.endswith("_unique")]
        if unique and campaign_id:
            # where and in what the message was first opened (clicked): counted with its unique counters
            for sk in (keys.country(country_code(event.country)), keys.device(mail_client(event.user_agent, event.ip))):
                ops.append(self._add_op(keys.campaign_counter(campaign_id, sk), unique))
        return ops

    def _add_op(self, row: keys.Key, names: Sequence[str]) -> dict[str, Any]:
        return self.stats.update_op(*row, expression="ADD " + ", ".join(f"#c{i} :one" for i in range(len(names))),
                                    names={f"#c{i}": n for i, n in enumerate(names)}, params={":one": 1})

    def add_variant_engagement(self, campaign_id: str, variant: str, *, opened: int = 0, clicked: int = 0) -> None:
        """One UpdateItem on the variant's counters."""
        self.stats.update(*keys.campaign_counter(campaign_id, keys.variant(variant)),
                          expression="ADD opened :o, clicked :c", params={":o": opened, ":c": clicked})

    # ---- reading
    def campaign(self, campaign_id: str) -> CampaignCounters:
        """Every counter of a campaign: one Query of its partition (paged only past 1 MB)."""
        found = CampaignCounters()
        for row in self.stats.query_all(pk=keys.campaign_partition(campaign_id)):
            sk: str = row["sk"]
            if sk == keys.TOTALS:
                found.totals = row
            elif sk.startswith(keys.HOUR_PREFIX):
                found.hours.append((sk.removeprefix(keys.HOUR_PREFIX), row))
            elif sk.startswith(keys.VARIANT_PREFIX):
                found.variants[sk.removeprefix(keys.VARIANT_PREFIX)] = row
            elif sk.startswith(keys.LINK_PREFIX):
                found.links.append((int(sk.removeprefix(keys.LINK_PREFIX)), row))
            elif sk.startswith(keys.COUNTRY_PREFIX):
                found.countries.append((sk.removeprefix(keys.COUNTRY_PREFIX), row))
            elif sk.startswith(keys.DEVICE_PREFIX):
                found.devices.append((sk.removeprefix(keys.DEVICE_PREFIX), row))
        found.hours.sort(key=lambda hour: hour[0])
        return found

    def campaign_totals(self, campaign_id: str) -> dict[str, Any]:
        """A campaign's totals ({} before its first count): one GetItem."""
        return self.stats.get(*keys.campaign_counter(campaign_id, keys.TOTALS)) or {}

    def variants(self, campaign_id: str) -> dict[str, dict[str, Any]]:
        """{variant name: its counters}: one Query of the campaign's variant rows."""
        return {row["sk"].removeprefix(keys.VARIANT_PREFIX): row
                for row in self.stats.query_all(pk=keys.campaign_partition(campaign_id), sk_prefix=keys.VARIANT_PREFIX)}

    def account(self, granularity: Granularity, *, after: str, until: str | None = None,
                page: int | None = None) -> dict[str, dict[str, Any]]:
        """{period: counters} of the account's days (``yyyy-mm-dd``) or hours (``yyyy-mm-ddThh``) after
        ``after`` and, when given, not after ``until``; periods without activity have no row. One Query
        per ``page`` rows read (~1 MB when None): a page the size of the range holds all of it."""
        prefix, period_key = (keys.DAY_PREFIX, keys.day) if granularity == "day" else (keys.HOUR_PREFIX, keys.hour)
        found: dict[str, dict[str, Any]] = {}
        start: dict[str, Any] | None = None
        while True:
            rows, start = self.stats.query(pk=keys.STATS, sk_after=period_key(after), limit=page, start=start)
            for row in rows:
                period = row["sk"].removeprefix(prefix)
                if row["sk"].startswith(prefix) and (until is None or period <= until):
                    found[period] = row
            if not start or not rows or (until is not None and rows[-1]["sk"] >= period_key(until)):
                return found
