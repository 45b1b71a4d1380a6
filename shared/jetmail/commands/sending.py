"""``jetmail sending`` and ``jetmail send``."""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jetmail.commands import domain_errors, load_services
from jetmail.commands.remote import api_errors, api_url_option, connect
from jetmail.deliverability import sending as domain

if TYPE_CHECKING:
    from jetmail.messaging.messages import MessagePublic, SendRequest


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


def _pairs(values: tuple[str, ...], sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, found, item = value.partition(sep)
        if not found or not key.strip():
            raise click.BadParameter(f"{value!r}: expected KEY{sep}VALUE", param_hint=what)
        out[key.strip()] = item.strip() if sep == ":" else item
    return out


def _attachment(path: Path, content_id: str | None = None) -> dict[str, Any]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    item = {"filename": path.name, "content_type": content_type,
            "content": base64.b64encode(path.read_bytes()).decode("ascii")}
    return {**item, "content_id": content_id} if content_id else item


@click.command("send")
@click.option("--to", required=True, help="recipient address")
@click.option("--name", help="recipient display name")
@click.option("--template", help="a stored template (or give --subject with --html-file and/or --text-file)")
@click.option("--subject", help="inline subject (Jinja)")
@click.option("--html-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="inline HTML (Jinja)")
@click.option("--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="inline text (Jinja)")
@click.option("--context", "context_json", help="template variables as a JSON object")
@click.option("--var", "variables", multiple=True, help="a template variable, KEY=VALUE (repeatable)")
@click.option("--cc", multiple=True, help="a copied recipient (repeatable)")
@click.option("--bcc", multiple=True, help="a blind copy (repeatable)")
@click.option("--reply-to", help="the Reply-To address")
@click.option("--from", "from_", help="the From address (an allowed sender)")
@click.option("--attach", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a file to attach (repeatable; content type from its extension)")
@click.option("--inline-image", multiple=True, help="CID=FILE: an image the HTML shows as src=\"cid:CID\"")
@click.option("--header", "headers", multiple=True, help="a custom header, NAME:VALUE (repeatable)")
@click.option("--tag", "tags", multiple=True, help="a tag (repeatable)")
@click.option("--metadata", multiple=True, help="a metadata entry, KEY=VALUE (repeatable)")
@click.option("--language", help="the recipient's language (template locale)")
@click.option("--idempotency-key", help="the same key again sends nothing twice")
@click.option("--json", "as_json", is_flag=True, help="print the message as JSON")
@api_url_option
@domain_errors
@api_errors
def send(to: str, name: str | None, template: str | None, subject: str | None, html_file: Path | None,
         text_file: Path | None, context_json: str | None, variables: tuple[str, ...], cc: tuple[str, ...],
         bcc: tuple[str, ...], reply_to: str | None, from_: str | None, attach: tuple[Path, ...],
         inline_image: tuple[str, ...], headers: tuple[str, ...], tags: tuple[str, ...],
         metadata: tuple[str, ...], language: str | None, idempotency_key: str | None, as_json: bool,
         api_url: str | None) -> None:
    """Send one transactional message, as POST /v1/messages does: through the local services, or with
    --api-url through the API (an Idempotency-Key is made when none is given, so a retry sends once)."""
    from pydantic import ValidationError

    from jetmail.messaging.messages import SendRequest

    try:
        context = json.loads(context_json) if context_json else {}
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--context") from None
    if not isinstance(context, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--context")
    context.update(_pairs(variables, "=", "--var"))
    images = _pairs(inline_image, "=", "--inline-image")
    for file in images.values():
        if not Path(file).is_file():
            raise click.BadParameter(f"{file}: no such file", param_hint="--inline-image")
    body: dict[str, Any] = {
        "to": to, "name": name, "template": template, "subject": subject,
        "html": html_file.read_text(encoding="utf-8") if html_file else None,
        "text": text_file.read_text(encoding="utf-8") if text_file else None,
        "context": context, "cc": list(cc), "bcc": list(bcc), "reply_to": reply_to, "from": from_,
        "language": language, "headers": _pairs(headers, ":", "--header"), "tags": list(tags),
        "metadata": _pairs(metadata, "=", "--metadata"),
        "attachments": [_attachment(p) for p in attach] + [_attachment(Path(f), c) for c, f in images.items()],
    }
    try:
        request = SendRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in exc.errors()]
        raise click.ClickException("refused:\n  " + "\n  ".join(problems)) from None
    message, created = _submit(request, api_url=api_url, idempotency_key=idempotency_key)
    if as_json:
        click.echo(message.model_dump_json(indent=2, exclude_none=True))
        return
    click.echo(f"{message.id} {message.status.value}{'' if created else ' (idempotent replay)'}")
    for dropped in message.suppressed_recipients or []:
        click.echo(f"  dropped {dropped.role} {dropped.address}: {dropped.reason}")


def _submit(request: SendRequest, *, api_url: str | None, idempotency_key: str | None) -> tuple[MessagePublic, bool]:
    """The queued message and whether this call created it (False: an idempotent replay). Remotely a replay
    is not told apart: the API answers it with the same message."""
    from jetmail.messaging.messages import MessagePublic

    if not api_url:
        return load_services().messages.submit(request, idempotency_key=idempotency_key)
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    answer = connect(api_url).send_message(body, idempotency_key=idempotency_key)
    return MessagePublic.model_validate(answer), True
