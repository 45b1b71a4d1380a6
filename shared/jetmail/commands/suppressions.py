"""``jetmail suppressions``."""

from __future__ import annotations

import csv
import sys
from typing import IO, TYPE_CHECKING

import click

from jetmail.audience.addresses import normalise_email
from jetmail.commands import domain_errors, load_services

if TYPE_CHECKING:
    from jetmail.deliverability.suppressions import Reason


@click.group()
def suppressions() -> None:
    """List, add, remove and export suppressed addresses."""


@suppressions.command("list")
@click.option("--limit", default=50, show_default=True)
def list_entries(limit: int) -> None:
    items, _ = load_services().suppressions.list(limit=limit)
    for item in items:
        click.echo(f"{item.email:<40} {item.reason:<24} {item.source:<16} {item.created_at}")


@suppressions.command("add")
@click.argument("email")
@click.option("--reason", type=click.Choice(["manual", "unsubscribed", "hard_bounce", "spam_complaint"]),
              default="manual", show_default=True)
@domain_errors
def add(email: str, reason: Reason) -> None:
    svc = load_services()
    entry = svc.suppressions.add(normalise_email(email).lower(), reason=reason, source="cli")
    cancelled = svc.feedback.cancel_pending(entry.email, reason=reason) if entry.blocks_transactional else 0
    click.echo(f"suppressed {entry.email} ({entry.reason}); {cancelled} pending message(s) cancelled")


@suppressions.command("remove")
@click.argument("email")
def remove(email: str) -> None:
    if not load_services().suppressions.remove(email):
        raise click.ClickException(f"{email} is not suppressed")
    click.echo(f"removed {email}")


@suppressions.command("export")
@click.argument("output", type=click.File("w"), default="-")
def export(output: IO[str]) -> None:
    """Write every suppression as CSV (to a file, or standard output)."""
    writer = csv.writer(output if output is not None else sys.stdout)
    writer.writerow(["email", "reason", "source", "created_at"])
    svc = load_services()
    start = None
    while True:
        items, start = svc.suppressions.list(limit=500, start=start)
        for item in items:
            writer.writerow([item.email, item.reason, item.source, item.created_at])
        if not start:
            break
