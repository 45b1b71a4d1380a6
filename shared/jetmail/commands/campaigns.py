"""``jetmail campaign`` and ``jetmail scheduler``."""

from __future__ import annotations

import csv
import json
import logging
import signal
import sys
import threading
import time
from functools import wraps
from typing import TYPE_CHECKING, Any, Protocol

import click

from jetmail.campaigns.model import (
    CampaignCreate,
    CampaignFailure,
    CampaignFailurePage,
    CampaignPublic,
    CampaignUpdate,
)
from jetmail.commands import domain_errors, load_services
from jetmail.commands.remote import api_errors, api_url_option, connect
from jetmail.scheduler import tick

if TYPE_CHECKING:
    from jetmail.client import Client
    from jetmail.reporting.reports import CampaignReport


def _campaign_errors(fn: Any) -> Any:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from jetmail.campaigns.service import CampaignNotFound, InvalidTransition, UnknownAudience, VariantNotFound

        try:
            return fn(*args, **kwargs)
        except (CampaignNotFound, InvalidTransition, UnknownAudience, VariantNotFound) as exc:
            raise click.ClickException(str(exc)) from None

    return domain_errors(api_errors(wrapper))


class _Backend(Protocol):
    """What the commands that also run remotely need; the local one is the campaign service itself."""

    def list(self) -> list[CampaignPublic]: ...

    def get(self, campaign_id: str) -> CampaignPublic: ...

    def create(self, body: CampaignCreate) -> CampaignPublic: ...

    def send(self, campaign_id: str) -> CampaignPublic: ...

    def update(self, campaign_id: str, body: CampaignUpdate) -> CampaignPublic: ...

    def pause(self, campaign_id: str) -> CampaignPublic: ...

    def resume(self, campaign_id: str) -> CampaignPublic: ...

    def cancel(self, campaign_id: str) -> CampaignPublic: ...

    def failures(self, campaign_id: str, *, limit: int, cursor: str | None) -> CampaignFailurePage: ...


class _Reports(Protocol):
    """What ``campaign report`` needs; the local one is the report service itself."""

    def campaign_report(self, campaign_id: str) -> CampaignReport: ...


class _Remote:
    """Campaigns and their reports through the API: one request per call."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @staticmethod
    def _public(data: dict[str, Any]) -> CampaignPublic:
        return CampaignPublic.model_validate({**data, "from_": data.get("from")})

    def list(self) -> list[CampaignPublic]:
        return [self._public(c) for c in self.client.iter_campaigns()]

    def get(self, campaign_id: str) -> CampaignPublic:
        return self._public(self.client.get_campaign(campaign_id))

    def create(self, body: CampaignCreate) -> CampaignPublic:
        return self._public(self.client.create_campaign(body.model_dump(mode="json", by_alias=True,
                                                                        exclude_none=True)))

    def send(self, campaign_id: str) -> CampaignPublic:
        return self._public(self.client.send_campaign(campaign_id))

    def update(self, campaign_id: str, body: CampaignUpdate) -> CampaignPublic:
        return self._public(self.client.update_campaign(campaign_id, **body.model_dump(mode="json",
                                                                                       exclude_unset=True)))

    def pause(self, campaign_id: str) -> CampaignPublic:
        return self._public(self.client.pause_campaign(campaign_id))

    def resume(self, campaign_id: str) -> CampaignPublic:
        return self._public(self.client.resume_campaign(campaign_id))

    def cancel(self, campaign_id: str) -> CampaignPublic:
        return self._public(self.client.cancel_campaign(campaign_id))

    def failures(self, campaign_id: str, *, limit: int, cursor: str | None) -> CampaignFailurePage:
        page = self.client.list_campaign_failures(campaign_id, limit=limit, cursor=cursor)
        return CampaignFailurePage(failures=[CampaignFailure.model_validate(f) for f in page["data"]],
                                   next_cursor=page.get("next_cursor"))

    def campaign_report(self, campaign_id: str) -> CampaignReport:
        from jetmail.reporting.reports import CampaignReport

        return CampaignReport.model_validate(self.client.campaign_report(campaign_id))


def _backend(api_url: str | None) -> _Backend:
    return _Remote(connect(api_url)) if api_url else load_services().campaigns


def _reports(api_url: str | None) -> _Reports:
    return _Remote(connect(api_url)) if api_url else load_services().reports


@click.group()
def campaign() -> None:
    """Inspect and control campaigns (with --api-url, through the API)."""


def _line(c: Any) -> str:
    p = c.progress
    return (f"{c.id}  {c.state.value:<9} {c.name[:30]:<30} total {p.total:>7}  sent {p.sent:>7}  "
            f"failed {p.failed:>5}  skipped {p.skipped:>5}  queued {p.queued:>7}")


@campaign.command("list")
@api_url_option
@_campaign_errors
def list_campaigns(api_url: str | None) -> None:
    """Newest first."""
    for c in _backend(api_url).list():
        click.echo(_line(c))


@campaign.command("status")
@click.argument("campaign_id")
@click.option("--watch", is_flag=True, help="show a progress bar until the campaign finishes")
@click.option("--json", "as_json", is_flag=True)
@api_url_option
@_campaign_errors
def status(campaign_id: str, watch: bool, as_json: bool, api_url: str | None) -> None:
    """State and progress of a campaign."""
    backend = _backend(api_url)
    current = backend.get(campaign_id)
    if as_json:
        click.echo(current.model_dump_json(indent=2, by_alias=True))
        return
    if not watch:
        click.echo(_line(current))
        return
    done_states = {"sent", "cancelled"}
    with click.progressbar(length=max(current.progress.total, 1), label=f"{campaign_id} {current.state.value}",
                           show_pos=True) as bar:
        shown = 0
        while True:
            p = current.progress
            finished = p.sent + p.failed + p.skipped
            if p.total and bar.length != p.total:
                bar.length = p.total
            bar.update(finished - shown)
            shown = finished
            bar.label = f"{campaign_id} {current.state.value}"
            if current.state.value in done_states:
                break
            time.sleep(1)
            current = backend.get(campaign_id)
    click.echo(_line(current))


def _action(name: str, doc: str) -> None:
    @campaign.command(name, help=doc)
    @click.argument("campaign_id")
    @api_url_option
    @_campaign_errors
    def command(campaign_id: str, api_url: str | None) -> None:
        result = getattr(_backend(api_url), name)(campaign_id)
        click.echo(_line(result))


for _name, _doc in (("send", "Start a campaign now."), ("pause", "Pause sending."),
                    ("resume", "Resume a paused campaign."), ("cancel", "Cancel a campaign.")):
    _action(_name, _doc)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _report_text(r: Any) -> list[str]:
    c, rates, p = r.counts, r.rates, r.progress
    base = rates.engagement_base
    lines = [f"{r.id}  {r.name}  ({r.state.value})",
             f"progress   total {p.total}  sent {p.sent}  failed {p.failed}  skipped {p.skipped}  queued {p.queued}",
             "",
             f"{'':<14}{'count':>9}   rate",
             f"{'sent':<14}{c.sent:>9}",
             f"{'failed':<14}{c.failed:>9}",
             f"{'delivered':<14}{c.delivered:>9}   {_pct(rates.delivery):>6}  of sent",
             f"{'bounced':<14}{c.bounced:>9}   {_pct(rates.bounce):>6}  of sent  (hard {c.bounced_hard}, "
             f"soft {c.bounced_soft})",
             f"{'complained':<14}{c.complained:>9}   {_pct(rates.complaint):>6}  of {base}",
             f"{'unsubscribed':<14}{c.unsubscribed:>9}   {_pct(rates.unsubscribe):>6}  of {base}",
             f"{'opened':<14}{c.opens.human_unique:>9}   {_pct(rates.open):>6}  of {base}  (unique human; "
             f"{c.opens.unique} with machines, {c.opens.total} opens in all)",
             f"{'clicked':<14}{c.clicks.human_unique:>9}   {_pct(rates.click):>6}  of {base}  (unique human; "
             f"{c.clicks.unique} with machines, {c.clicks.total} clicks in all)",
             f"{'click-to-open':<14}{'':>9}   {_pct(rates.click_to_open):>6}"]
    if r.ab is not None:
        ab = r.ab
        lines += ["", f"A/B test ({ab.metric}, {ab.state}"
                      + (f", winner {ab.winner}" if ab.winner else "")
                      + (f", p={ab.p_value:.4f}" if ab.p_value is not None else "")
                      + (", significant" if ab.significant else ", not significant") + ")",
                  f"  {'variant':<16}{'sent':>7}{'opened':>8}{'clicked':>8}{'open':>8}{'click':>8}{'p':>8}"]
        for v in ab.variants:
            p_text = "-" if v.p_value is None else f"{v.p_value:.4f}"
            lines.append(f"  {v.name + (' *' if v.leading else ''):<16}{v.sent:>7}{v.opened:>8}{v.clicked:>8}"
                         f"{_pct(v.open_rate):>8}{_pct(v.click_rate):>8}{p_text:>8}")
    if r.links:
        lines += ["", "top links", f"  {'#':>3} {'clicks':>7} {'human':>6}  url"]
        lines += [f"  {link.index:>3} {link.clicks:>7} {link.human_clicks:>6}  {link.url}" for link in r.links[:10]]
    for title, rows in (("countries", r.countries), ("mail clients", r.devices)):
        if rows:
            lines += ["", f"{title} (unique opens / clicks)"]
            lines += [f"  {row.key:<32} {row.opens:>6} {row.clicks:>6}" for row in rows[:10]]
    return lines


@campaign.command("report")
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON (as GET /v1/campaigns/ID/report)")
@click.option("--csv", "as_csv", is_flag=True, help="the report as CSV rows (section,key,metric,value)")
@api_url_option
@_campaign_errors
def report(campaign_id: str, as_json: bool, as_csv: bool, api_url: str | None) -> None:
    """Counts, rates, A/B variants, top links, countries and mail clients of a campaign."""
    from jetmail.reporting.reports import report_csv

    result = _reports(api_url).campaign_report(campaign_id)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    elif as_csv:
        click.echo(report_csv(result), nl=False)
    else:
        click.echo("\n".join(_report_text(result)))


FAILURE_FIELDS = ("email", "reason", "run", "batch", "position", "message_id", "at")


@campaign.command("failures")
@click.argument("campaign_id")
@click.option("--limit", type=click.IntRange(1), default=None, help="show at most N failures (default: all)")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows (" + ",".join(FAILURE_FIELDS) + ")")
@api_url_option
@_campaign_errors
def failures(campaign_id: str, limit: int | None, as_csv: bool, api_url: str | None) -> None:
    """Recipients a campaign failed for good, with the reason (as GET /v1/campaigns/ID/failures)."""
    backend = _backend(api_url)
    writer = csv.writer(sys.stdout, lineterminator="\n") if as_csv else None
    if writer is not None:
        writer.writerow(FAILURE_FIELDS)
    shown, cursor = 0, None
    while limit is None or shown < limit:
        page = backend.failures(campaign_id, limit=min(500, limit - shown) if limit else 500, cursor=cursor)
        for f in page.failures:
            if writer is not None:
                writer.writerow([getattr(f, name) for name in FAILURE_FIELDS])
            else:
                # a multi-line SMTP reply stays on its recipient's line
                click.echo(f"{f.email:<40} {f.run}/{f.batch}/{f.position:<4} {f.at[:19]}  {' '.join(f.reason.split())}")
        shown += len(page.failures)
        cursor = page.next_cursor
        if cursor is None:
            break
    if writer is None and shown == 0:
        click.echo(f"{campaign_id} has no permanent failures")


@campaign.command("create")
@click.argument("definition", type=click.File("r"))
@click.option("--archive", is_flag=True, help="show it, once sent, in its public lists' archives")
@api_url_option
@_campaign_errors
def create(definition: Any, archive: bool, api_url: str | None) -> None:
    """Create a draft from a JSON file (the body of POST /v1/campaigns)."""
    try:
        body = CampaignCreate.model_validate(json.load(definition))
    except (ValueError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"invalid campaign definition: {exc}") from None
    if archive:
        body.archive = True
    click.echo(_line(_backend(api_url).create(body)))


@campaign.command("archive")
@click.argument("campaign_id")
@click.option("--off", is_flag=True, help="take it out of the archives again")
@api_url_option
@_campaign_errors
def archive(campaign_id: str, off: bool, api_url: str | None) -> None:
    """Show a campaign, once sent, in the public archive of each public list of its audience (any state)."""
    click.echo(_line(_backend(api_url).update(campaign_id, CampaignUpdate(archive=not off))))


@click.command()
@click.option("--interval", type=click.FloatRange(0.5), default=10.0, show_default=True,
              help="seconds between ticks (EventBridge runs it every minute in AWS)")
@click.option("--once", is_flag=True, help="run one tick and exit")
def scheduler(interval: float, once: bool) -> None:
    """Run the scheduler tick: start due campaigns, decide A/B tests, finish campaigns."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    svc = load_services()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        summary = tick(svc)
        if once:
            click.echo(json.dumps(summary))
            return
        if stop.wait(interval):
            return
