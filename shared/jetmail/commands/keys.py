"""``jetmail keys``: API keys."""

from __future__ import annotations

import click

from jetmail.commands import domain_errors, load_services


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", required=True, help="who or what uses the key")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["admin", "send"]), default=("admin",),
              show_default=True, help="`send` may only send transactional mail; `admin` may do everything")
@domain_errors
def create(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key. The key is printed once, alone on the last line."""
    key, token = load_services().api_keys.create(name, scopes=list(scopes))  # type: ignore[arg-type]
    click.echo(f"created key {key.key_id} ({key.name}, scopes: {', '.join(key.scopes)}); store it now, "
               "it is not shown again:")
    click.echo(token)


@keys.command("list")
def list_keys() -> None:
    """List keys (never their secrets)."""
    for key in load_services().api_keys.list():
        state = "revoked " + key.revoked_at if key.revoked_at else "active"
        click.echo(f"{key.key_id}  {key.name:<24} {','.join(key.scopes):<10} {key.created_at}  {state}")


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key at once."""
    if not load_services().api_keys.revoke(key_id):
        raise click.ClickException(f"no active key {key_id!r}")
    click.echo(f"revoked {key_id}")
