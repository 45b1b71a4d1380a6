"""``jetmail dev``: run the whole system on this machine."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import click

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import DEFAULT_ROOT, INFRA_SERVICES, LocalStack, StackError, StackState

# the bounce server first: the processes started after it send with its return-path domain
APP_SERVICES = ("api", "bounces", "worker-transactional", "worker-bulk", "scheduler", "submission")


def _stack(root: str | None) -> LocalStack:
    return LocalStack(Path(root) if root else DEFAULT_ROOT)


def _print_endpoints(state: StackState) -> None:
    ep = state.endpoints()
    rows = [
        ("NATS", ep["nats_url"]),
        ("DynamoDB/SES/SNS (moto)", ep["aws_endpoint_url"]),
        ("SMTP sink", ep["smtp"]),
        ("API", ep["api_url"]),
        ("SMTP submission", ep["submission"] and "127.0.0.1:{port} (STARTTLS), :{tls_port} (TLS)".format(
            **ep["submission"])),
        ("bounce intake (MX)", ep["bounces"] and "127.0.0.1:{port} for @{domain}".format(**ep["bounces"])),
        ("received mail", ep["maildir"]),
        ("settings file", ep["env_file"]),
    ]
    for label, value in rows:
        if value:
            click.echo(f"  {label:<24} {value}")
    for name, svc in ep["services"].items():
        click.echo(f"  {'process ' + name:<24} pid {svc['pid']}{'' if svc['alive'] else ' (not running)'}")


def start(stack: LocalStack, *, infra_only: bool = False, echo: Callable[[str], None] = print) -> StackState:
    """Start the infrastructure, create tables and streams, then jetmail's own processes."""
    from jetmail.bootstrap import bootstrap
    from jetmail.config import Settings

    state = stack.up(INFRA_SERVICES)
    # this is the edge: the stack's own settings win over the shell's
    os.environ.update(state.env())
    settings = Settings(_env_file=None)
    for line in bootstrap(settings):
        echo(line)
    if not infra_only:
        state = stack.up(INFRA_SERVICES + APP_SERVICES)
    return state


@click.group()
@click.option("--root", envvar="JETMAIL_DEV_ROOT", default=None, help="state folder (default .jetmail/dev)")
@click.pass_context
def dev(ctx: click.Context, root: str | None) -> None:
    """Run the local stack: nats-server, moto (DynamoDB/SES/SNS), an SMTP sink, API, workers, scheduler."""
    ctx.obj = _stack(root)


@dev.command()
@click.option("--infra-only", is_flag=True, help="start only nats, moto and the SMTP sink")
@click.pass_obj
def up(stack: LocalStack, infra_only: bool) -> None:
    """Start (or keep) every local service; safe to run again."""
    try:
        state = start(stack, infra_only=infra_only, echo=lambda line: click.echo(f"  {line}"))
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("jetmail local stack is up:")
    _print_endpoints(state)
    click.echo(f"  use it from a shell: set -a; . {state.endpoints()['env_file']}; set +a")


@dev.command()
@click.pass_obj
def down(stack: LocalStack) -> None:
    """Stop exactly the processes `up` started."""
    stopped = stack.down()
    click.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable endpoints")
@click.pass_obj
def status(stack: LocalStack, as_json: bool) -> None:
    """Show endpoints and processes of the local stack."""
    state = stack.load()
    if as_json:
        click.echo(json.dumps({"running": bool(state.services), **state.endpoints()}, indent=2))
        return
    if not state.services:
        click.echo("local stack is not running (start it with `jetmail dev up`)")
        return
    _print_endpoints(state)


URLS = {"api": "api_url", "nats": "nats_url", "aws": "aws_endpoint_url", "smtp": "smtp"}


@dev.command()
@click.argument("service", type=click.Choice(sorted(URLS)))
@click.pass_obj
def url(stack: LocalStack, service: str) -> None:
    """Print one endpoint of the running stack (for scripts: API=$(jetmail dev url api))."""
    value = stack.load().endpoints()[URLS[service]] if stack.load().services else None
    if not value:
        raise click.ClickException(f"{service} is not running (start the stack with `jetmail dev up`)")
    click.echo(value)


@dev.group()
def mail() -> None:
    """Read what the local SMTP sink received."""


@mail.command("list")
@click.option("--to", "recipient", default=None, help="only messages for this recipient")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def mail_list(stack: LocalStack, recipient: str | None, limit: int, as_json: bool) -> None:
    box = Mailbox(stack.load().maildir)
    entries = box.for_recipient(recipient) if recipient else box.entries()
    entries = entries[-limit:]
    if as_json:
        click.echo(json.dumps([e.__dict__ for e in entries], indent=2))
        return
    for entry in entries:
        subject = box.message(entry.id)["Subject"]
        click.echo(f"{entry.id}  {', '.join(entry.rcpt_tos):<32}  {subject}")
    click.echo(f"{len(entries)} message(s) shown, {box.count()} received in total")


@mail.command("show")
@click.argument("entry_id")
@click.pass_obj
def mail_show(stack: LocalStack, entry_id: str) -> None:
    box = Mailbox(stack.load().maildir)
    try:
        click.echo(box.raw(entry_id).decode("utf-8", errors="replace"))
    except FileNotFoundError:
        raise click.ClickException(f"no received message {entry_id!r}") from None
