"""What the report page shows, shaped from a ``CampaignReport``: charts plus the numbers behind them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup

from jetmail.dashboard.charts import Series, bar_chart, funnel_chart, line_chart, nice_ceiling
from jetmail.reporting.reports import CampaignReport, TimelinePoint

MAX_TIMELINE_HOURS = 24 * 31
NONE = "\N{EN DASH}"  # shown for a figure that does not exist (a rate over zero)


def percent(value: float | None) -> str:
    return NONE if value is None else f"{value:.1%}"


def hourly(points: list[TimelinePoint]) -> list[TimelinePoint]:
    """Every hour from the first to the last point with activity (zeros in between), so the x axis is time;
    at most the last ``MAX_TIMELINE_HOURS``."""
    if not points:
        return []
    by_hour = {datetime.fromisoformat(p.hour): p for p in points}
    first, last = min(by_hour), max(by_hour)
    first = max(first, last - timedelta(hours=MAX_TIMELINE_HOURS - 1))
    out = []
    at = first
    while at <= last:
        out.append(by_hour.get(at) or TimelinePoint(hour=at.strftime("%Y-%m-%dT%H:00:00Z")))
        at += timedelta(hours=1)
    return out


def _hour_label(hour: str, *, same_day: bool) -> str:
    at = datetime.fromisoformat(hour)
    return at.strftime("%H:00") if same_day else at.strftime("%d %b %H:00")


@dataclass(frozen=True)
class ReportView:
    report: CampaignReport
    timeline: list[TimelinePoint]
    funnel: list[tuple[str, int]]
    timeline_chart: Markup
    funnel_chart: Markup
    variant_chart: Markup | None


def report_view(report: CampaignReport) -> ReportView:
    timeline = hourly(report.timeline)
    same_day = len({p.hour[:10] for p in timeline}) <= 1
    labels = [_hour_label(p.hour, same_day=same_day) for p in timeline]
    span = f"{timeline[0].hour} to {timeline[-1].hour} (UTC)" if timeline else "no activity yet"
    timeline_svg = line_chart(
        labels,
        # the funnel's colours: sent 0, delivered 1, opened 2, clicked 3
        [Series("sends", [p.sent for p in timeline], tone=0), Series("opens", [p.opens for p in timeline], tone=2),
         Series("clicks", [p.clicks for p in timeline], tone=3)],
        chart_id="timeline", title="Sends, opens and clicks per hour",
        desc=f"Line chart of sends, unique human opens and unique human clicks per hour, {span}; "
             "the table below lists every hour.")
    counts = report.counts
    funnel = [("sent", counts.sent), ("delivered", counts.delivered), ("opened", counts.opens.human_unique),
              ("clicked", counts.clicks.human_unique)]
    funnel_svg = funnel_chart(
        funnel, chart_id="funnel", title="Funnel: sent, delivered, opened, clicked",
        desc="Bars for " + ", ".join(f"{name} {value:,}" for name, value in funnel)
             + "; each bar's length and percentage are relative to the messages sent.")
    variant_svg = None
    if report.ab is not None and report.ab.variants:
        variants = report.ab.variants
        opens = [v.open_rate or 0.0 for v in variants]
        clicks = [v.click_rate or 0.0 for v in variants]
        variant_svg = bar_chart(
            [v.name for v in variants], [Series("open rate", opens, tone=2), Series("click rate", clicks, tone=3)],
            chart_id="variants", title="A/B variants: open and click rates",
            desc="; ".join(f"variant {v.name}: open rate {percent(v.open_rate)}, click rate {percent(v.click_rate)}"
                           for v in variants) + ".",
            fmt=lambda value: f"{value:.1%}", top_value=min(nice_ceiling(max(opens + clicks)), 1.0))
    return ReportView(report=report, timeline=timeline, funnel=funnel, timeline_chart=timeline_svg,
                      funnel_chart=funnel_svg, variant_chart=variant_svg)
