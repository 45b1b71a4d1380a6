"""``jetmail sending``."""

from __future__ import annotations

import json

import click

from jetmail.commands import load_services
from jetmail.deliverability import sending as domain


@click.group()
def sending() -> None:
    """Sending status and the operator's resume after a reputation stop."""


@sending.command("status")
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    result = domain.status(load_services())
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    rep = result["reputation"]
    click.echo(f"marketing stopped: {'yes' if result['marketing_stopped'] else 'no'}")
    click.echo(f"reputation ({rep['window_hours']} h): sent {rep['sent']}, bounce {rep['bounce_rate']:.2%}, "
               f"complaint {rep['complaint_rate']:.3%}"
               + ("" if rep["delivery_rate"] is None else f", delivery {rep['delivery_rate']:.2%}"))
    for key, value in result["limiter"].items():
        click.echo(f"{key}: {json.dumps(value, default=str)}")
    for queue, pending in result["queues"].items():
        click.echo(f"queue {queue}: {json.dumps(pending)}")


@sending.command("resume")
def resume() -> None:
    """Clear a reputation stop and send what it parked."""
    result = domain.resume(load_services())
    click.echo(f"cleared: {', '.join(result['cleared']) or 'nothing was stopped'}; "
               f"re-enqueued {result['requeued_batches']} parked batch(es)")
