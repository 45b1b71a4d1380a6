"""``jetmail contacts`` and ``jetmail lists``.

A list is named by its id (``lst_…``) or by its name; a name shared by several lists is refused
with their ids, so a command never picks one of them silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import click

from jetmail.audience.model import ImportFormat, SubscriptionStatus
from jetmail.commands import domain_errors, load_services

READ_CHUNK = 64 * 1024
SHOWN_ERRORS = 20


@click.group()
def contacts() -> None:
    """Import and inspect contacts."""


def _chunks(stream: IO[bytes], bar: Any) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        bar.update(len(chunk))
        yield chunk


@contacts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--list", "list_ref", required=True, metavar="LIST", help="list id or name")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]),
              help="default: jsonl for .jsonl/.ndjson files, csv otherwise")
@click.option("--status", type=click.Choice(["subscribed", "unsubscribed", "pending"]), default="subscribed",
              show_default=True, help="status in the list (a contact that unsubscribed stays unsubscribed)")
@domain_errors
def import_file(file: Path, list_ref: str, fmt: str | None, status: str) -> None:
    """Import FILE into a list, streaming it (any size). CSV: a header with email and optionally name,
    language, timezone, attributes (JSON); other columns become attributes. JSONL: one object per line.
    Exits 1 when some rows failed."""
    fmt = fmt or ("jsonl" if file.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    svc = load_services()
    target = svc.contacts.find_list(list_ref)
    with file.open("rb") as stream, click.progressbar(length=file.stat().st_size, label="importing",
                                                       file=sys.stderr) as bar:
        report = svc.contacts.import_members(_chunks(stream, bar), list_id=target.id,
                                             fmt=cast(ImportFormat, fmt), status=cast(SubscriptionStatus, status))
    kept = f", {report.kept_unsubscribed} kept unsubscribed" if report.kept_unsubscribed else ""
    click.echo(f"imported {report.imported} row(s) into {target.name} ({target.id}){kept}; "
               f"{report.failed} failed")
    for error in report.errors[:SHOWN_ERRORS]:
        click.echo(f"  line {error.row}: {error.message}")
    if report.failed > min(len(report.errors), SHOWN_ERRORS):
        click.echo(f"  … and {report.failed - min(len(report.errors), SHOWN_ERRORS)} more")
    if report.failed:
        raise click.exceptions.Exit(1)


@contacts.command("get")
@click.argument("email")
@domain_errors
def get_contact(email: str) -> None:
    """Print a contact as JSON."""
    click.echo(json.dumps(load_services().contacts.get(email).model_dump(mode="json"), indent=2,
                          ensure_ascii=False))


@click.group()
def lists() -> None:
    """Create and list contact lists."""


@lists.command("create")
@click.argument("name")
@domain_errors
def create_list(name: str) -> None:
    """Create a list; its id is printed alone on the last line."""
    created = load_services().contacts.create_list(name)
    click.echo(f"created list {created.name!r}:")
    click.echo(created.id)


@lists.command("list")
@domain_errors
def list_lists() -> None:
    """Every list, oldest first."""
    for item in load_services().contacts.lists():
        click.echo(f"{item.id}  {item.created_at[:19]}  {item.name}")


@contacts.command("export")
@click.argument("email")
@domain_errors
def export_contact(email: str) -> None:
    """Print everything held about EMAIL as JSON (contact, memberships, messages, events, suppression,
    sequence enrolments)."""
    data = load_services().privacy.export(email)
    click.echo(json.dumps(data.model_dump(mode="json"), indent=2, ensure_ascii=False))


@contacts.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="confirm: erasure cannot be undone")
@domain_errors
def erase_contact(email: str, yes: bool) -> None:
    """Erase everything held about EMAIL, keeping only a keyed hash in the suppression list so the address
    is never mailed again."""
    if not yes:
        raise click.ClickException("erasure cannot be undone: pass --yes to confirm")
    report = load_services().privacy.erase(email)
    click.echo(f"erased {email}: contact {'deleted' if report.contact else 'none'}, "
               f"{report.memberships} membership(s), {report.messages_scrubbed} message(s) scrubbed, "
               f"{report.messages_cancelled} pending cancelled, {report.events} event(s), "
               f"{report.sequence_enrolments} sequence enrolment(s); kept {report.pseudonym}")
