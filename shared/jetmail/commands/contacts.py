"""``jetmail contacts`` and ``jetmail lists``: against the local services, or with ``--api-url`` against the API.

A list is named by its id (``lst_…``) or by its name; a name shared by several lists is refused
with their ids, so a command never picks one of them silently.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

import click

from jetmail.audience.model import (
    LIST_ID,
    MAX_REPORTED_ERRORS,
    Contact,
    ContactNotFound,
    ImportFormat,
    ImportReport,
    ListCreate,
    ListNotFound,
    ListUpdate,
    MailingList,
    SubscriptionStatus,
)
from jetmail.commands import domain_errors, load_services
from jetmail.commands.remote import api_errors, api_url_option, connect, describe
from jetmail.compliance.gdpr import ErasureReport, PersonalData

if TYPE_CHECKING:
    from jetmail.client import Client
    from jetmail.services import Services

READ_CHUNK = 64 * 1024
SHOWN_ERRORS = 20
# one request of a remote import: under the API's default body limit (JETMAIL_MAX_BODY_BYTES, 256 KiB)
REMOTE_PART_BYTES = 200_000


class _Backend(Protocol):
    def find_list(self, ref: str) -> MailingList: ...

    def import_file(self, stream: IO[bytes], *, list_id: str, fmt: ImportFormat, status: SubscriptionStatus,
                    progress: Callable[[int], None]) -> ImportReport: ...

    def get(self, email: str) -> Contact: ...

    def export(self, email: str) -> PersonalData: ...

    def erase(self, email: str) -> ErasureReport: ...

    def create_list(self, body: ListCreate) -> MailingList: ...

    def update_list(self, list_id: str, body: ListUpdate) -> MailingList: ...

    def lists(self) -> list[MailingList]: ...


class _Local:
    """Contacts and lists in the local services' table."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def find_list(self, ref: str) -> MailingList:
        return self.svc.contacts.find_list(ref)

    def import_file(self, stream: IO[bytes], *, list_id: str, fmt: ImportFormat, status: SubscriptionStatus,
                    progress: Callable[[int], None]) -> ImportReport:
        chunks = iter(lambda: stream.read(READ_CHUNK), b"")
        return self.svc.contacts.import_members(chunks, list_id=list_id, fmt=fmt, status=status, progress=progress)

    def get(self, email: str) -> Contact:
        return self.svc.contacts.get(email)

    def export(self, email: str) -> PersonalData:
        return self.svc.privacy.export(email)

    def erase(self, email: str) -> ErasureReport:
        return self.svc.privacy.erase(email)

    def create_list(self, body: ListCreate) -> MailingList:
        return self.svc.contacts.create_list(body)

    def update_list(self, list_id: str, body: ListUpdate) -> MailingList:
        return self.svc.contacts.update_list(list_id, body)

    def lists(self) -> list[MailingList]:
        return self.svc.contacts.lists()


class _Remote:
    """Contacts and lists through the API. An import goes up in parts of whole records, each one request
    under the API's body limit, so a file of any size fits."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def find_list(self, ref: str) -> MailingList:
        from jetmail.audience.contacts import pick_list
        from jetmail.client import NotFound

        if LIST_ID.match(ref):
            try:
                return MailingList.model_validate(self.client.get_list(ref))
            except NotFound:
                raise ListNotFound(f"no list with the id or name {ref!r}") from None
        return pick_list(ref, self.lists())

    def import_file(self, stream: IO[bytes], *, list_id: str, fmt: ImportFormat, status: SubscriptionStatus,
                    progress: Callable[[int], None]) -> ImportReport:
        from jetmail.client import ApiError, TransportError

        total = ImportReport()
        for first_line, offset, part in _parts(stream, fmt, progress):
            try:
                report = ImportReport.model_validate(self.client.import_contacts(list_id, part, format=fmt,
                                                                                 status=status))
            except (ApiError, TransportError) as exc:
                if not total.imported and not total.failed:
                    raise
                raise click.ClickException(
                    f"{describe(exc)}\n  {total.imported} row(s) before line {first_line} were imported; "
                    "importing the file again is safe") from None
            total.imported += report.imported
            total.kept_unsubscribed += report.kept_unsubscribed
            total.failed += report.failed
            for error in report.errors:
                if len(total.errors) < MAX_REPORTED_ERRORS:
                    total.errors.append(error.model_copy(update={"row": error.row + offset}))
        return total

    def get(self, email: str) -> Contact:
        return Contact.model_validate(self.client.get_contact(email))

    def export(self, email: str) -> PersonalData:
        return PersonalData.model_validate(self.client.export_contact(email))

    def erase(self, email: str) -> ErasureReport:
        return ErasureReport.model_validate(self.client.delete_contact(email, erase=True))

    def create_list(self, body: ListCreate) -> MailingList:
        settings = body.model_dump(exclude={"name"}, exclude_none=True)
        return MailingList.model_validate(self.client.create_list(body.name, **settings))

    def update_list(self, list_id: str, body: ListUpdate) -> MailingList:
        return MailingList.model_validate(self.client.update_list(list_id, **body.model_dump(exclude_unset=True)))

    def lists(self) -> list[MailingList]:
        return [MailingList.model_validate(item) for item in self.client.iter_lists()]


def _records(stream: IO[bytes], fmt: ImportFormat) -> Iterator[tuple[str, bool]]:
    """Each record of an import file as its text with its line ends, and whether it is blank; a CSV record
    may span lines (a quoted line break). Records are cut where the API's reader cuts them."""
    line_no = 0

    def lines() -> Iterator[str]:
        nonlocal line_no
        for raw in stream:  # a binary file splits at b"\n" only, as the API's reader does
            line_no += 1
            try:
                yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError:
                raise click.ClickException(f"the file is not UTF-8 text (line {line_no}); save it as UTF-8") from None

    if fmt == "jsonl":
        yield from ((line, not line.strip()) for line in lines())
        return
    taken: list[str] = []

    def taking() -> Iterator[str]:
        for line in lines():
            taken.append(line)
            yield line

    reader = csv.reader(taking())
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error:
            cells = ["?"]  # unreadable: the API reports it at its line
        yield "".join(taken), not any(cell.strip() for cell in cells)
        taken.clear()
    if taken:
        yield "".join(taken), True


def _parts(stream: IO[bytes], fmt: ImportFormat, progress: Callable[[int], None],
           ) -> Iterator[tuple[int, int, bytes]]:
    """The file as request bodies of about ``REMOTE_PART_BYTES`` of whole records, each CSV part led by the
    header: (the file's line the part's records start at, the lines to add to a line number the API
    reports for the part, the body). ``progress`` gets the bytes read, once a part."""
    records = _records(stream, fmt)
    read = 0

    def body() -> bytes:
        nonlocal read
        progress(stream.tell() - read)
        read = stream.tell()
        return (header + "".join(part)).encode()

    header = ""
    if fmt == "csv":
        for text, blank in records:
            header += text
            if not blank:
                break
    header_lines = header.count("\n")
    budget = max(REMOTE_PART_BYTES - len(header.encode()), 1)
    part: list[str] = []
    size, next_line, first_line, sent = 0, header_lines + 1, header_lines + 1, False
    for text, _ in records:
        length = len(text.encode())
        if part and size + length > budget:
            yield first_line, first_line - header_lines - 1, body()
            part, size, first_line, sent = [], 0, next_line, True
        part.append(text)
        size += length
        next_line += text.count("\n")
    if part or not sent:
        yield first_line, first_line - header_lines - 1, body()


def _backend(api_url: str | None) -> _Backend:
    return _Remote(connect(api_url)) if api_url else _Local(load_services())


def _audience_errors(fn: Any) -> Any:
    """A missing list or contact is an ``error:`` line, locally and through the API alike."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ListNotFound, ContactNotFound) as exc:
            raise click.ClickException(str(exc)) from None

    return domain_errors(api_errors(wrapper))


@click.group()
def contacts() -> None:
    """Import, inspect, export and erase contacts (with --api-url, through the API)."""


@contacts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--list", "list_ref", required=True, metavar="LIST", help="list id or name")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]),
              help="default: jsonl for .jsonl/.ndjson files, csv otherwise")
@click.option("--status", type=click.Choice(["subscribed", "unsubscribed", "pending"]), default="subscribed",
              show_default=True, help="status in the list (a contact that unsubscribed stays unsubscribed)")
@api_url_option
@_audience_errors
def import_file(file: Path, list_ref: str, fmt: str | None, status: str, api_url: str | None) -> None:
    """Import FILE into a list, streaming it (any size; through the API in parts of about 200 KB).
    CSV: a header with email and optionally name, language, timezone, attributes (JSON); other columns
    become attributes. JSONL: one object per line. Exits 1 when some rows failed."""
    fmt = fmt or ("jsonl" if file.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    backend = _backend(api_url)
    target = backend.find_list(list_ref)
    with file.open("rb") as stream, click.progressbar(length=file.stat().st_size, label="importing",
                                                       file=sys.stderr) as bar:
        report = backend.import_file(stream, list_id=target.id, fmt=cast(ImportFormat, fmt),
                                     status=cast(SubscriptionStatus, status), progress=bar.update)
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
@api_url_option
@_audience_errors
def get_contact(email: str, api_url: str | None) -> None:
    """Print a contact as JSON."""
    click.echo(json.dumps(_backend(api_url).get(email).model_dump(mode="json"), indent=2, ensure_ascii=False))


@click.group()
def lists() -> None:
    """Create and list contact lists (with --api-url, through the API)."""


def _list_options(fn: Any) -> Any:
    """What subscribers see of a list and how they join it (create and update)."""
    for option in reversed([
        click.option("--public/--private", "public", default=None,
                     help="offered on subscription forms and the preference centre (default: private)"),
        click.option("--title", help="the name subscribers see (default: the list's name)"),
        click.option("--description", help="what subscribers get"),
        click.option("--opt-in", "opt_in", type=click.Choice(["double", "single"]),
                     help="double (default): a confirmation mail first; single: subscribed at once"),
        click.option("--field", "form_fields", multiple=True, metavar="ATTRIBUTE",
                     help="an attribute the public form may set (repeat for more)"),
    ]):
        fn = option(fn)
    return fn


def _list_fields(public: bool | None, title: str | None, description: str | None, opt_in: str | None,
                 form_fields: tuple[str, ...]) -> dict[str, Any]:
    given = {"public": public, "title": title, "description": description, "opt_in": opt_in,
             "form_fields": list(form_fields) or None}
    return {k: v for k, v in given.items() if v is not None}


def _valid(model: Any, values: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise click.ClickException(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _show_list(item: MailingList) -> None:
    access = f"public {item.public_id}" if item.public else "private"
    click.echo(f"  {access}, {item.opt_in} opt-in" + (f", form fields: {', '.join(item.form_fields)}"
                                                      if item.form_fields else ""))


@lists.command("create")
@click.argument("name")
@_list_options
@api_url_option
@_audience_errors
def create_list(name: str, public: bool | None, title: str | None, description: str | None, opt_in: str | None,
                form_fields: tuple[str, ...], api_url: str | None) -> None:
    """Create a list (private and double opt-in unless told otherwise); its id is printed alone on the
    last line."""
    body = _valid(ListCreate, {"name": name, **_list_fields(public, title, description, opt_in, form_fields)})
    created = _backend(api_url).create_list(body)
    click.echo(f"created list {created.name!r}:")
    _show_list(created)
    click.echo(created.id)


@lists.command("update")
@click.argument("list_ref", metavar="LIST")
@click.option("--name", help="a new name")
@_list_options
@api_url_option
@_audience_errors
def update_list(list_ref: str, name: str | None, public: bool | None, title: str | None, description: str | None,
                opt_in: str | None, form_fields: tuple[str, ...], api_url: str | None) -> None:
    """Change a list (id or name): only the options given."""
    fields = _list_fields(public, title, description, opt_in, form_fields)
    if name is not None:
        fields["name"] = name
    if not fields:
        raise click.ClickException("nothing to change: give at least one option (see --help)")
    backend = _backend(api_url)
    target = backend.find_list(list_ref)
    updated = backend.update_list(target.id, _valid(ListUpdate, fields))
    click.echo(f"updated list {updated.name!r} ({updated.id}):")
    _show_list(updated)


@lists.command("form")
@click.argument("list_ref", metavar="LIST")
@api_url_option
@_audience_errors
def list_form(list_ref: str, api_url: str | None) -> None:
    """Print an HTML subscription form for a public list, to paste into a web page. It posts to the API
    (--api-url, else JETMAIL_PUBLIC_BASE_URL)."""
    from jetmail.audience.intake import InvalidSubscription, form_snippet, make_challenge
    from jetmail.config import get_settings

    settings = get_settings()
    target = _backend(api_url).find_list(list_ref)
    challenge = make_challenge(settings.subscribe_challenge, bits=settings.subscribe_pow_bits, settings=settings)
    try:
        click.echo(form_snippet(target, base_url=api_url or settings.public_base_url, challenge=challenge), nl=False)
    except InvalidSubscription as exc:
        raise click.ClickException(str(exc)) from None


@lists.command("list")
@api_url_option
@_audience_errors
def list_lists(api_url: str | None) -> None:
    """Every list, oldest first."""
    for item in _backend(api_url).lists():
        access = f"public {item.public_id}" if item.public else "private"
        click.echo(f"{item.id}  {item.created_at[:19]}  {item.name}  ({access}, {item.opt_in} opt-in)")


@contacts.command("export")
@click.argument("email")
@api_url_option
@_audience_errors
def export_contact(email: str, api_url: str | None) -> None:
    """Print everything held about EMAIL as JSON (contact, memberships, messages, events, suppression,
    sequence enrolments)."""
    data = _backend(api_url).export(email)
    click.echo(json.dumps(data.model_dump(mode="json"), indent=2, ensure_ascii=False))


@contacts.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="confirm: erasure cannot be undone")
@api_url_option
@_audience_errors
def erase_contact(email: str, yes: bool, api_url: str | None) -> None:
    """Erase everything held about EMAIL, keeping only a keyed hash in the suppression list so the address
    is never mailed again."""
    if not yes:
        raise click.ClickException("erasure cannot be undone: pass --yes to confirm")
    report = _backend(api_url).erase(email)
    click.echo(f"erased {email}: contact {'deleted' if report.contact else 'none'}, "
               f"{report.memberships} membership(s), {report.messages_scrubbed} message(s) scrubbed, "
               f"{report.messages_cancelled} pending cancelled, {report.events} event(s), "
               f"{report.sequence_enrolments} sequence enrolment(s); kept {report.pseudonym}")
