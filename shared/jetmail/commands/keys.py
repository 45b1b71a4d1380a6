"""``jetmail keys``: API keys."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from jetmail.commands import domain_errors, load_services
from jetmail.compliance.apikeys import KeyNotFound, Scope
from jetmail.compliance.audit import cli_actor


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", required=True, help="who or what uses the key")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["admin", "send"]), default=("admin",),
              show_default=True, help="`send` may only send transactional mail; `admin` may do everything")
@domain_errors
def create(name: str, scopes: tuple[Scope, ...]) -> None:
    """Create a key. The key is printed once, alone on the last line."""
    svc = load_services()
    key, token = svc.api_keys.create(name, scopes=list(scopes))
    svc.audit.record("key.created", target=key.key_id, actor=cli_actor(),
                     changes={"name": key.name, "scopes": list(key.scopes)})
    click.echo(f"created key {key.key_id} ({key.name}, scopes: {', '.join(key.scopes)}); store it now, "
               "it is not shown again:")
    click.echo(token)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_keys(as_json: bool) -> None:
    """List keys (never their secrets): scopes, state, request limit, and until when a rotated key's old
    secret still works."""
    svc = load_services()
    default = svc.settings.api_rate_per_minute  # 0: no limit
    rows = []
    for key in svc.api_keys.list():
        grace_ends_at = key.grace_ends_at()
        if as_json:
            click.echo(json.dumps({**key.model_dump(mode="json", exclude={"previous_expires_at"}),
                                   "limit_per_minute": key.rate_per_minute or default or None,
                                   "grace_ends_at": grace_ends_at}, ensure_ascii=False))
            continue
        limit = str(key.rate_per_minute) if key.rate_per_minute else f"{default or 'none'} (default)"
        state = f"revoked {key.revoked_at[:19]}" if key.revoked_at else "active"
        rows.append((key.key_id, key.name, ",".join(key.scopes), key.created_at[:19], state, limit,
                     f"until {grace_ends_at[:19]}" if grace_ends_at else "-"))
    if as_json:
        return
    if not rows:
        click.echo("no keys")
        return
    header = ("ID", "NAME", "SCOPES", "CREATED (UTC)", "STATE", "LIMIT/MIN", "OLD SECRET")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key at once."""
    svc = load_services()
    if not svc.api_keys.revoke(key_id):
        raise click.ClickException(f"no active key {key_id!r}")
    svc.audit.record("key.revoked", target=key_id, actor=cli_actor())
    click.echo(f"revoked {key_id}")


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic in newer click only
    """``0`` (none), seconds, or one number with a unit: ``90s``, ``30m``, ``24h``, ``7d``."""

    name = "duration"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        unit = text[-1:] if text[-1:] in self._UNITS else "s"
        number = text[:-1] if text[-1:] in self._UNITS else text
        if not number.isdigit():
            self.fail(f"{value!r} is not a duration like 0, 90s, 30m, 24h or 7d", param, ctx)
        return timedelta(seconds=int(number) * self._UNITS[unit])


@keys.command("rotate")
@click.argument("key_id")
@click.option("--grace", type=Duration(), default="0", show_default=True,
              help="how long the old secret keeps working (e.g. 24h); 0: it stops at once")
@domain_errors
def rotate(key_id: str, grace: timedelta) -> None:
    """Give a key a new secret (same id, name, scopes and limit). The new key is printed once, alone on the
    last line."""
    svc = load_services()
    try:
        key, token = svc.api_keys.rotate(key_id, grace=grace)
    except KeyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    svc.audit.record("key.rotated", target=key.key_id, actor=cli_actor(),
                     changes={"grace_s": int(grace.total_seconds())})
    until = f"keeps working for {grace}" if grace else "stopped working now"
    click.echo(f"rotated key {key.key_id} ({key.name}); the old secret {until}. Store the new one now, "
               "it is not shown again:")
    click.echo(token)


@keys.command("limit")
@click.argument("key_id")
@click.option("--per-minute", type=click.IntRange(min=1), default=None,
              help="requests per minute for this key; leave out to return to JETMAIL_API_RATE_PER_MINUTE")
@domain_errors
def limit(key_id: str, per_minute: int | None) -> None:
    """Set a key's own request limit."""
    svc = load_services()
    try:
        svc.api_keys.set_rate_limit(key_id, per_minute)
    except KeyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    svc.audit.record("key.limit_set", target=key_id, actor=cli_actor(), changes={"per_minute": per_minute})
    click.echo(f"{key_id}: {per_minute} requests per minute" if per_minute else f"{key_id}: the default limit")
