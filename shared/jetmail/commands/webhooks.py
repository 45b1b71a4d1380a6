"""``jetmail webhooks``: endpoints, secrets, the delivery log and replay (docs/guide/webhooks.md)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import click

from jetmail.commands import load_services
from jetmail.webhooks.endpoints import EndpointCreate, EndpointFilter, EndpointPublic, EndpointUpdate
from jetmail.webhooks.events import EVENT_TYPES


def _line(endpoint: EndpointPublic) -> str:
    state = "enabled" if endpoint.enabled else f"disabled ({endpoint.disabled_reason})"
    kinds = "all events" if set(endpoint.events) == set(EVENT_TYPES) else ",".join(endpoint.events)
    return f"{endpoint.id}  {state}  {endpoint.url}  {kinds}"


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a time zone (e.g. 2026-01-01T00:00:00+00:00)")
    return parsed


@click.group()
def webhooks() -> None:
    """Manage outgoing webhook endpoints, their secrets and their deliveries."""


@webhooks.command("create")
@click.argument("url")
@click.option("--event", "events", multiple=True, type=click.Choice(EVENT_TYPES),
              help="An event type to deliver (repeat it; default: all).")
@click.option("--category", help="Only events of messages of this category.")
@click.option("--tag", help="Only events of messages with this tag.")
@click.option("--campaign", "campaign_id", help="Only events of this campaign.")
@click.option("--description")
def create(url: str, events: tuple[str, ...], category: str | None, tag: str | None, campaign_id: str | None,
           description: str | None) -> None:
    """Register URL; prints the endpoint and its signing secret."""
    values: dict[str, Any] = {"url": url, "description": description,
                              "filter": EndpointFilter(category=category, tag=tag, campaign_id=campaign_id)}
    if events:
        values["events"] = list(events)
    endpoint = load_services().webhook_service.create(EndpointCreate.model_validate(values))
    click.echo(_line(endpoint))
    click.echo(f"secret: {endpoint.secret}")


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_endpoints(as_json: bool) -> None:
    endpoints = load_services().webhook_endpoints.list_all()
    for endpoint in endpoints:
        click.echo(endpoint.public().model_dump_json() if as_json else _line(endpoint))


@webhooks.command("show")
@click.argument("endpoint_id")
def show(endpoint_id: str) -> None:
    click.echo(load_services().webhook_service.get(endpoint_id).public().model_dump_json(indent=2))


@webhooks.command("update")
@click.argument("endpoint_id")
@click.option("--url")
@click.option("--event", "events", multiple=True, type=click.Choice(EVENT_TYPES),
              help="Replace the event types (repeat it).")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the endpoint on (again) or off.")
@click.option("--description")
def update(endpoint_id: str, url: str | None, events: tuple[str, ...], enabled: bool | None,
           description: str | None) -> None:
    values: dict[str, Any] = {"url": url, "enabled": enabled, "description": description,
                              "events": list(events) or None}
    body = EndpointUpdate.model_validate({k: v for k, v in values.items() if v is not None})
    click.echo(_line(load_services().webhook_service.update(endpoint_id, body)))


@webhooks.command("delete")
@click.argument("endpoint_id")
def delete(endpoint_id: str) -> None:
    load_services().webhook_service.delete(endpoint_id)
    click.echo(f"deleted {endpoint_id}")


@webhooks.command("rotate")
@click.argument("endpoint_id")
@click.option("--grace-hours", type=click.FloatRange(0, 24 * 7), default=24.0, show_default=True,
              help="How long the current secret keeps signing beside the new one.")
def rotate(endpoint_id: str, grace_hours: float) -> None:
    """Make a new signing secret and print it."""
    endpoint = load_services().webhook_service.rotate(endpoint_id, grace=timedelta(hours=grace_hours))
    click.echo(f"secret: {endpoint.secret}")


@webhooks.command("secret")
@click.argument("endpoint_id")
def secret(endpoint_id: str) -> None:
    click.echo(load_services().webhook_service.get(endpoint_id).secret)


@webhooks.command("deliveries")
@click.argument("endpoint_id")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--since", help="ISO time with a zone.")
@click.option("--until", help="ISO time with a zone.")
@click.option("--json", "as_json", is_flag=True)
def deliveries(endpoint_id: str, limit: int, since: str | None, until: str | None, as_json: bool) -> None:
    """Delivery attempts, newest first."""
    attempts, _ = load_services().webhook_service.attempts(endpoint_id, limit=limit, since=_time(since),
                                                          until=_time(until))
    for a in attempts:
        if as_json:
            click.echo(a.model_dump_json())
        else:
            click.echo(f"{a.at}  {a.event_id}  {a.event_type:<26} #{a.attempt:<3} {a.outcome:<9} "
                       f"{a.status_code or '-'}  {a.latency_ms if a.latency_ms is not None else '-'} ms"
                       f"{'  ' + a.error if a.error else ''}")


@webhooks.command("replay")
@click.argument("endpoint_id")
@click.option("--event", "event_id", help="The one event to deliver again.")
@click.option("--since", help="Every event attempted since this ISO time (with a zone).")
@click.option("--until", help="... and before this one (default: now).")
def replay(endpoint_id: str, event_id: str | None, since: str | None, until: str | None) -> None:
    """Deliver again one event (--event) or a time range (--since [--until])."""
    if (event_id is None) == (since is None):
        raise click.UsageError("give either --event or --since")
    ids = load_services().webhook_service.replay(endpoint_id, event_id=event_id, since=_time(since),
                                                 until=_time(until))
    click.echo(json.dumps({"replayed": ids}))
