"""``jetmail messages``: search the message log and show one message's timeline."""

from __future__ import annotations

import json
from datetime import datetime

import click

from jetmail.commands import load_services
from jetmail.messaging.messages import MessageStatus


@click.group("messages")
def messages() -> None:
    """The message log: what was sent, to whom, and what became of it."""


@messages.command("list")
@click.option("--to", help="recipient address")
@click.option("--tag", help="a tag the message carries")
@click.option("--status", type=click.Choice([s.value for s in MessageStatus]), help="the message's status now")
@click.option("--campaign", "campaign_id", help="a campaign's messages (with --to and --status only)")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), help="created at or after (UTC)")
@click.option("--until", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), help="created at or before (UTC)")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True, help="messages per page")
@click.option("--cursor", help="the next_cursor a previous page printed")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line, then the next cursor")
def list_messages(to: str | None, tag: str | None, status: str | None, campaign_id: str | None,
                  since: datetime | None, until: datetime | None, limit: int, cursor: str | None,
                  as_json: bool) -> None:
    """Messages, newest first: the same search and costs as GET /v1/messages."""
    from jetmail.messaging.log import LogFilter, open_log

    query = LogFilter(to=to, status=MessageStatus(status) if status else None, tag=tag, campaign_id=campaign_id,
                      since=since, until=until)
    items, next_cursor = open_log(load_services()).search(query, limit=limit, cursor=cursor)
    for item in items:
        if as_json:
            click.echo(json.dumps(item.model_dump(mode="json", exclude_none=True), ensure_ascii=False))
        else:
            click.echo(f"{(item.created_at or '')[:19]}  {item.status.value:<10} {item.id}  {item.to}"
                       f"  {','.join(item.tags or [])}")
    if as_json:
        click.echo(json.dumps({"next_cursor": next_cursor}))
    elif next_cursor:
        click.echo(f"next page: --cursor {next_cursor}")


@messages.command("show")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="the message and its timeline as JSON")
def show(message_id: str, as_json: bool) -> None:
    """One message (a transactional msg_... or a campaign's cm_... id) and its timeline."""
    from jetmail.messaging.log import open_log

    detail = open_log(load_services()).detail(message_id)
    if as_json:
        click.echo(json.dumps(detail.model_dump(mode="json", exclude_none=True), ensure_ascii=False, indent=2))
        return
    click.echo(f"{detail.id}  {detail.status.value}  to {detail.to}")
    for label, value in (("campaign", detail.campaign_id), ("template", detail.template),
                         ("subject", detail.subject), ("tags", ", ".join(detail.tags or []) or None),
                         ("metadata", json.dumps(detail.metadata) if detail.metadata else None)):
        if value:
            click.echo(f"  {label}: {value}")
    for entry in detail.timeline:
        extra = "  ".join(v for v in (entry.detail, entry.link, "machine" if entry.machine else None) if v)
        click.echo(f"{(entry.at or '-')[:19]:<19}  {entry.event:<16} {extra}")
