"""``jetmail audit``: read the audit log."""

from __future__ import annotations

import json

import click

from jetmail.commands import load_services


@click.command("audit")
@click.option("--since", help="ISO 8601 time, e.g. 2026-11-01T00:00:00Z")
@click.option("--until", help="ISO 8601 time (inclusive)")
@click.option("--action", help="an action (campaign.sent) or a prefix ending in '.' (campaign.)")
@click.option("--actor", help="key:<id>, cli:<user> or system")
@click.option("--target", help="a campaign id, <template>/<locale>, a key id or an email address")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def audit(since: str | None, until: str | None, action: str | None, actor: str | None, target: str | None,
          limit: int, as_json: bool) -> None:
    """Management actions, newest first."""
    svc = load_services()
    if target and "@" in target:
        target = svc.pseudonyms.pseudonym(target)
    page = svc.audit.query(since=since, until=until, action=action, actor=actor, target=target, limit=limit)
    for entry in page.entries:
        if as_json:
            click.echo(json.dumps(entry.model_dump(mode="json"), ensure_ascii=False))
        else:
            changes = json.dumps(entry.changes, ensure_ascii=False) if entry.changes else ""
            click.echo(f"{entry.at[:19]}  {entry.actor:<20} {entry.action:<20} {entry.target}  {changes}")
