"""Campaign reports and account statistics, read from the counters in the stats table.

Every figure is a counter (``jetmail.reporting.counters``) added exactly once when an event (or a send) was
recorded, so a report never reads events: a campaign report is one GetItem on the campaign item
(main table) and one Query on the campaign's counters (its totals, hours, variants, links,
countries and mail clients), whatever the number of recipients and events; account statistics are
one Query of the account's days or hours between two keys.

Rates and their denominators (``None`` when the denominator is 0):

=============  ==============================================  =====================================
rate           numerator                                        denominator
=============  ==============================================  =====================================
delivery       delivered                                        sent
open           unique human opens                               delivered
click          unique human clicks                              delivered
click_to_open  unique human clicks                              unique human opens
bounce         hard + soft bounces                              sent
complaint      complaints                                       delivered
unsubscribe    unsubscribes                                     delivered
open_all       unique opens, machine opens included             delivered
click_all      unique clicks, machine clicks included           delivered
=============  ==============================================  =====================================

Where a provider reports no deliveries (the SMTP provider: an SMTP server's ``250`` is all it
says), ``delivered`` stays 0 and the rates over "delivered" would never show; they are then taken
over the messages *accepted* instead (sent minus bounced), and ``engagement_base`` says which
(``delivered`` or ``accepted``).

"Unique" counts one per message (the first open or click of it); "human" leaves out opens and
clicks made by privacy proxies, security scanners and prefetchers (``jetmail.deliverability.tracking``). A
message first opened by Apple's proxy and later by its reader counts once in ``unique`` and once
in ``human_unique``. Countries and mail clients count unique opens and clicks: the country and
client of the first open (or click) of each message, with a human column beside it. A/B variant
rates are per message sent, as the test itself measures them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from jetmail.campaigns.model import ABResult, CampaignState, Progress
from jetmail.campaigns.service import z_test
from jetmail.campaigns.store import CampaignStore
from jetmail.reporting.counters import Counters

Granularity = Literal["day", "hour"]


class Engagement(BaseModel):
    """Opens or clicks of a campaign (or a period)."""

    total: int = Field(default=0, description="every open/click, repeats and machines included")
    human_total: int = 0
    machine_total: int = 0
    unique: int = Field(default=0, description="messages opened/clicked at least once")
    human_unique: int = Field(default=0, description="messages opened/clicked at least once by a person")


class Counts(BaseModel):
    sent: int = 0
    failed: int = Field(default=0, description="sends the provider refused or that could not be rendered")
    delivered: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    complained: int = 0
    unsubscribed: int = 0
    rejected: int = 0
    delayed: int = 0
    opens: Engagement = Field(default_factory=Engagement)
    clicks: Engagement = Field(default_factory=Engagement)

    @property
    def bounced(self) -> int:
        return self.bounced_hard + self.bounced_soft


class Rates(BaseModel):
    """Fractions (0.25 = 25 %); None when the denominator is 0. See the module doc for each one."""

    delivery: float | None = Field(default=None, description="delivered / sent")
    open: float | None = Field(default=None, description="unique human opens / delivered")
    click: float | None = Field(default=None, description="unique human clicks / delivered")
    click_to_open: float | None = Field(default=None, description="unique human clicks / unique human opens")
    bounce: float | None = Field(default=None, description="(hard + soft bounces) / sent")
    complaint: float | None = Field(default=None, description="complaints / delivered")
    unsubscribe: float | None = Field(default=None, description="unsubscribes / delivered")
    open_all: float | None = Field(default=None, description="unique opens (machines included) / delivered")
    click_all: float | None = Field(default=None, description="unique clicks (machines included) / delivered")
    engagement_base: Literal["delivered", "accepted"] = Field(
        default="delivered", description="what open, click, complaint and unsubscribe rates divide by: delivered "
                                         "messages, or accepted ones (sent - bounced) when the provider reports no "
                                         "deliveries (SMTP)")


class PeriodCounts(BaseModel):
    """The figures of one hour or day; opens and clicks are unique human ones first seen in it."""

    sent: int = 0
    failed: int = 0
    delivered: int = 0
    bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0
    opens: int = 0
    clicks: int = 0


class TimelinePoint(PeriodCounts):
    """One hour (UTC) of a campaign."""

    hour: str = Field(description="yyyy-mm-ddThh:00:00Z")


class LinkStats(BaseModel):
    index: int = Field(description="position of the link in the email (0 = first)")
    url: str
    clicks: int = Field(default=0, description="every click, machine ones included")
    human_clicks: int = 0


class Breakdown(BaseModel):
    """Unique opens and clicks by country or by mail client."""

    key: str = Field(description="ISO country code or 'unknown'; or the mail client / browser family")
    opens: int = Field(default=0, description="messages whose first open came from here")
    human_opens: int = 0
    clicks: int = Field(default=0, description="messages whose first click came from here")
    human_clicks: int = 0


class VariantReport(BaseModel):
    name: str
    sent: int = 0
    failed: int = 0
    opened: int = Field(default=0, description="unique human opens")
    clicked: int = Field(default=0, description="unique human clicks")
    open_rate: float | None = Field(default=None, description="opened / sent")
    click_rate: float | None = Field(default=None, description="clicked / sent")
    p_value: float | None = Field(default=None, description="two-proportion z-test against the leading variant "
                                                            "on the test metric (None for the leader itself)")
    leading: bool = False


class ABReport(BaseModel):
    metric: Literal["open_rate", "click_rate"]
    state: str = Field(description="testing, waiting, decided or manual")
    winner: str | None = None
    decided_by: str | None = None
    confidence_required: float
    p_value: float | None = Field(default=None, description="leader against the runner-up")
    confidence: float | None = Field(default=None, description="1 - p_value")
    significant: bool = Field(default=False, description="leader ahead and p_value < 1 - confidence_required")
    variants: list[VariantReport] = Field(default_factory=list)


class CampaignReport(BaseModel):
    id: str
    name: str
    state: CampaignState
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress
    counts: Counts
    rates: Rates
    timeline: list[TimelinePoint] = Field(default_factory=list, description="hours with activity, oldest first")
    links: list[LinkStats] = Field(default_factory=list, description="most clicked first")
    countries: list[Breakdown] = Field(default_factory=list, description="most opens first")
    devices: list[Breakdown] = Field(default_factory=list, description="mail clients, most opens first")
    ab: ABReport | None = None


class StatsPoint(PeriodCounts):
    """One day or hour of the account (UTC)."""

    period: str = Field(description="yyyy-mm-dd (day) or yyyy-mm-ddThh (hour)")


class AccountStats(BaseModel):
    start: str = Field(description="first period included")
    end: str = Field(description="last period included")
    granularity: Granularity
    counts: Counts
    rates: Rates
    points: list[StatsPoint] = Field(default_factory=list, description="every period of the range, oldest first")


# ---- reading

MAX_PERIODS: dict[str, int] = {"day": 400, "hour": 31 * 24}
STEP: dict[str, timedelta] = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
LINKS_SHOWN = 50


class InvalidRange(ValueError):
    """A statistics range that cannot be read: unparsable, reversed or too long."""


def _n(item: Mapping[str, Any], name: str) -> int:
    return int(item.get(name, 0) or 0)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _engagement(item: Mapping[str, Any], kind: str) -> Engagement:
    return Engagement(total=_n(item, f"{kind}_total"), human_total=_n(item, f"{kind}_human_total"),
                      machine_total=_n(item, f"{kind}_machine_total"), unique=_n(item, f"{kind}_unique"),
                      human_unique=_n(item, f"{kind}_human_unique"))


def counts_from(item: Mapping[str, Any]) -> Counts:
    """The counters of one stats item (``TOTALS``, an hour, a day) or of a sum of them."""
    return Counts(sent=_n(item, "sent"), failed=_n(item, "failed"), delivered=_n(item, "delivered"),
                  bounced_hard=_n(item, "bounced_hard"), bounced_soft=_n(item, "bounced_soft"),
                  complained=_n(item, "complained"), unsubscribed=_n(item, "unsubscribed"),
                  rejected=_n(item, "rejected"), delayed=_n(item, "delayed"),
                  opens=_engagement(item, "open"), clicks=_engagement(item, "click"))


def rates_from(c: Counts) -> Rates:
    base = c.delivered if c.delivered else max(c.sent - c.bounced, 0)
    return Rates(delivery=_ratio(c.delivered, c.sent), open=_ratio(c.opens.human_unique, base),
                 click=_ratio(c.clicks.human_unique, base),
                 click_to_open=_ratio(c.clicks.human_unique, c.opens.human_unique),
                 bounce=_ratio(c.bounced, c.sent), complaint=_ratio(c.complained, base),
                 unsubscribe=_ratio(c.unsubscribed, base), open_all=_ratio(c.opens.unique, base),
                 click_all=_ratio(c.clicks.unique, base),
                 engagement_base="delivered" if c.delivered else "accepted")


def _period_counts(item: Mapping[str, Any]) -> dict[str, int]:
    c = counts_from(item)
    return {"sent": c.sent, "failed": c.failed, "delivered": c.delivered, "bounced": c.bounced,
            "complained": c.complained, "unsubscribed": c.unsubscribed, "opens": c.opens.human_unique,
            "clicks": c.clicks.human_unique}


def _breakdown(key: str, item: Mapping[str, Any]) -> Breakdown:
    return Breakdown(key=key, opens=_n(item, "open_unique"), human_opens=_n(item, "open_human_unique"),
                     clicks=_n(item, "click_unique"), human_clicks=_n(item, "click_human_unique"))


def _most_first(rows: list[Breakdown]) -> list[Breakdown]:
    return sorted(rows, key=lambda b: (-b.opens, -b.clicks, b.key))


def parse_moment(value: str | datetime | date, *, name: str) -> datetime:
    """A date (``2026-11-28``), an hour (``2026-11-28T15``) or an ISO 8601 time; UTC unless it says."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = value.strip()
        if len(text) == 13 and text[10] == "T":  # an hour without minutes
            text += ":00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRange(f"{name}: {value!r} is not a date (2026-11-28), an hour (2026-11-28T15) "
                               f"or an ISO 8601 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _period(at: datetime, granularity: Granularity) -> str:
    return at.date().isoformat() if granularity == "day" else at.strftime("%Y-%m-%dT%H")


def _floor(at: datetime, granularity: Granularity) -> datetime:
    at = at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if granularity == "day" else at


class Reports:
    """Campaign reports and account statistics; each is a fixed, small number of DynamoDB requests."""

    def __init__(self, *, store: CampaignStore, counters: Counters) -> None:
        self.store = store
        self.counters = counters

    def campaign_report(self, campaign_id: str) -> CampaignReport:
        """One GetItem (the campaign) and one Query (its counters, paged only past 1 MB)."""
        item = self.store.get(campaign_id)
        counters = self.counters.campaign(campaign_id)
        counts = counts_from(counters.totals)
        if "sent" not in counters.totals:  # sent before sends were counted in the stats table
            counts.sent, counts.failed = _n(item, "sent"), _n(item, "failed")
        timeline = [TimelinePoint(hour=f"{hour}:00:00Z", **_period_counts(row)) for hour, row in counters.hours]
        links = sorted((LinkStats(index=index, url=row.get("url") or "", clicks=_n(row, "clicks"),
                                  human_clicks=_n(row, "human_clicks"))
                        for index, row in counters.links),
                       key=lambda link: (-link.clicks, link.index))[:LINKS_SHOWN]
        total, sent, failed, skipped = (_n(item, k) for k in ("total", "sent", "failed", "skipped"))
        progress = Progress(total=total, sent=sent, failed=failed, skipped=skipped,
                            queued=max(total - sent - failed - skipped, 0))
        return CampaignReport(
            id=item["id"], name=item["name"], state=item["state"], created_at=item["created_at"],
            started_at=item.get("started_at"), finished_at=item.get("finished_at"), progress=progress,
            counts=counts, rates=rates_from(counts), timeline=timeline, links=links,
            countries=_most_first([_breakdown(k, r) for k, r in counters.countries]),
            devices=_most_first([_breakdown(k, r) for k, r in counters.devices]),
            ab=self._ab(item, counters.variants),
        )

    def _ab(self, item: Mapping[str, Any], counters: Mapping[str, Mapping[str, Any]]) -> ABReport | None:
        test = self.store.definition(dict(item)).ab_test
        if test is None:
            return None
        hits_of = "opened" if test.metric == "open_rate" else "clicked"
        variants = []
        for variant in test.variants:
            c = counters.get(variant.name, {})
            sent = _n(c, "sent")
            variants.append(VariantReport(name=variant.name, sent=sent, failed=_n(c, "failed"),
                                          opened=_n(c, "opened"), clicked=_n(c, "clicked"),
                                          open_rate=_ratio(_n(c, "opened"), sent),
                                          click_rate=_ratio(_n(c, "clicked"), sent)))

        def rate(v: VariantReport) -> float:
            return (v.open_rate if test.metric == "open_rate" else v.click_rate) or 0.0

        def hits(v: VariantReport) -> int:
            return v.opened if hits_of == "opened" else v.clicked

        ranked = sorted(variants, key=rate, reverse=True)
        leader, runner_up = ranked[0], ranked[1]
        leader.leading = rate(leader) > rate(runner_up)
        for v in variants:
            if v is not leader:
                v.p_value = z_test(hits(leader), leader.sent, hits(v), v.sent)
        p_value = z_test(hits(leader), leader.sent, hits(runner_up), runner_up.sent)
        state = ABResult.model_validate_json(item["ab"]) if item.get("ab") else None
        return ABReport(metric=test.metric, state=state.state if state else "testing",
                        winner=state.winner if state else None, decided_by=state.decided_by if state else None,
                        confidence_required=test.confidence, p_value=p_value, confidence=1 - p_value,
                        significant=leader.leading and p_value < 1 - test.confidence, variants=variants)

    def account_stats(self, *, start: str | datetime | date | None = None, end: str | datetime | date | None = None,
                granularity: str = "day", now: datetime | None = None) -> AccountStats:
        """Every day (hour) from ``start`` to ``end``, both included: one Query on ``STATS``.

        Defaults: the last 30 days, or the last 24 hours; at most 400 days or 744 hours."""
        if granularity not in MAX_PERIODS:
            raise InvalidRange(f"granularity must be 'day' or 'hour', not {granularity!r}")
        g: Granularity = "day" if granularity == "day" else "hour"
        now = now or datetime.now(UTC)
        last = _floor(parse_moment(end, name="end") if end is not None else now, g)
        first = _floor(parse_moment(start, name="start") if start is not None
                       else last - STEP[g] * (29 if g == "day" else 23), g)
        if first > last:
            raise InvalidRange(f"start ({_period(first, g)}) is after end ({_period(last, g)})")
        periods = int((last - first) / STEP[g]) + 1
        if periods > MAX_PERIODS[g]:
            raise InvalidRange(f"the range spans {periods} {g}s; at most {MAX_PERIODS[g]} per request")
        # rows exist only for whole periods, so "after the period before start" means "from start"
        found = self.counters.account(g, after=_period(first - STEP[g], g), until=_period(last, g), page=periods)
        points = []
        summed: dict[str, int] = {}
        for i in range(periods):
            key = _period(first + STEP[g] * i, g)
            row = found.get(key, {})
            for name, value in row.items():
                if isinstance(value, int) and name != "expires_at":
                    summed[name] = summed.get(name, 0) + value
            points.append(StatsPoint(period=key, **_period_counts(row)))
        counts = counts_from(summed)
        return AccountStats(start=_period(first, g), end=_period(last, g), granularity=g, counts=counts,
                            rates=rates_from(counts), points=points)


# ---- CSV

def report_csv(report: CampaignReport) -> str:
    """The whole report as tidy rows ``section,key,metric,value`` (one figure a row: pivots as is)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["section", "key", "metric", "value"])

    def flat(section: str, key: str, values: Mapping[str, Any]) -> None:
        for metric, value in values.items():
            if isinstance(value, dict):
                for sub, inner in value.items():
                    writer.writerow([section, key, f"{metric}_{sub}", "" if inner is None else inner])
            else:
                writer.writerow([section, key, metric, "" if value is None else value])

    flat("campaign", report.id, {"name": report.name, "state": report.state.value, "created_at": report.created_at,
                                 "started_at": report.started_at, "finished_at": report.finished_at})
    flat("progress", "", report.progress.model_dump())
    flat("counts", "", {**report.counts.model_dump(), "bounced": report.counts.bounced})
    flat("rates", "", report.rates.model_dump())
    for point in report.timeline:
        flat("timeline", point.hour, point.model_dump(exclude={"hour"}))
    for link in report.links:
        flat("link", str(link.index), link.model_dump(exclude={"index"}))
    for row in report.countries:
        flat("country", row.key, row.model_dump(exclude={"key"}))
    for row in report.devices:
        flat("device", row.key, row.model_dump(exclude={"key"}))
    if report.ab is not None:
        flat("ab", "", report.ab.model_dump(exclude={"variants"}))
        for variant in report.ab.variants:
            flat("variant", variant.name, variant.model_dump(exclude={"name"}))
    return out.getvalue()
