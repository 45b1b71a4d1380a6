"""``jetmail suppressions``: against the local services, or with ``--api-url`` against the API."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Protocol

import click

from jetmail.audience.addresses import normalise_email
from jetmail.commands import domain_errors, load_services
from jetmail.commands.remote import api_errors, api_url_option, connect
from jetmail.deliverability.suppressions import Suppression

if TYPE_CHECKING:
    from jetmail.client import Client
    from jetmail.deliverability.suppressions import Reason
    from jetmail.services import Services


class _Backend(Protocol):
    def entries(self, *, limit: int | None) -> Iterator[Suppression]: ...

    def add(self, email: str, reason: Reason) -> tuple[Suppression, int | None]: ...

    def remove(self, email: str) -> bool: ...


class _Local:
    """The suppression list in the local services' table."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def entries(self, *, limit: int | None) -> Iterator[Suppression]:
        start = None
        while True:
            items, start = self.svc.suppressions.list(limit=limit or 500, start=start)
            yield from items
            if not start or limit is not None:
                return

    def add(self, email: str, reason: Reason) -> tuple[Suppression, int | None]:
        entry = self.svc.suppressions.add(normalise_email(email).lower(), reason=reason, source="cli")
        cancelled = self.svc.feedback.cancel_pending(entry.email, reason=reason) if entry.blocks_transactional else 0
        return entry, cancelled

    def remove(self, email: str) -> bool:
        return self.svc.suppressions.remove(email)


class _Remote:
    """The suppression list through the API; the API cancels pending mail itself and does not say how much."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def entries(self, *, limit: int | None) -> Iterator[Suppression]:
        if limit is not None:
            page = self.client.list_suppressions(limit=min(limit, 500))
            yield from (Suppression.model_validate(item) for item in page["data"])
            return
        yield from (Suppression.model_validate(item) for item in self.client.iter_suppressions(limit=500))

    def add(self, email: str, reason: Reason) -> tuple[Suppression, int | None]:
        return Suppression.model_validate(self.client.add_suppression(email, reason=reason)), None

    def remove(self, email: str) -> bool:
        from jetmail.client import NotFound

        try:
            self.client.delete_suppression(email)
        except NotFound:
            return False
        return True


def _backend(api_url: str | None) -> _Backend:
    return _Remote(connect(api_url)) if api_url else _Local(load_services())


@click.group()
def suppressions() -> None:
    """List, add, remove and export suppressed addresses (with --api-url, through the API)."""


@suppressions.command("list")
@click.option("--limit", default=50, show_default=True)
@api_url_option
@api_errors
def list_entries(limit: int, api_url: str | None) -> None:
    for item in _backend(api_url).entries(limit=limit):
        click.echo(f"{item.email:<40} {item.reason:<24} {item.source:<16} {item.created_at}")


@suppressions.command("add")
@click.argument("email")
@click.option("--reason", type=click.Choice(["manual", "unsubscribed", "hard_bounce", "spam_complaint"]),
              default="manual", show_default=True)
@api_url_option
@domain_errors
@api_errors
def add(email: str, reason: Reason, api_url: str | None) -> None:
    entry, cancelled = _backend(api_url).add(email, reason)
    click.echo(f"suppressed {entry.email} ({entry.reason})"
               + ("" if cancelled is None else f"; {cancelled} pending message(s) cancelled"))


@suppressions.command("remove")
@click.argument("email")
@api_url_option
@api_errors
def remove(email: str, api_url: str | None) -> None:
    if not _backend(api_url).remove(email):
        raise click.ClickException(f"{email} is not suppressed")
    click.echo(f"removed {email}")


@suppressions.command("export")
@click.argument("output", type=click.File("w"), default="-")
@api_url_option
@api_errors
def export(output: IO[str], api_url: str | None) -> None:
    """Write every suppression as CSV (to a file, or standard output)."""
    writer = csv.writer(output if output is not None else sys.stdout)
    writer.writerow(["email", "reason", "source", "created_at"])
    for item in _backend(api_url).entries(limit=None):
        writer.writerow([item.email, item.reason, item.source, item.created_at])
