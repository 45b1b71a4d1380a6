"""``jetmail templates``: load and inspect templates."""

from __future__ import annotations

from pathlib import Path

import click

from jetmail.commands import domain_errors, load_services


@click.group()
def templates() -> None:
    """Manage templates."""


@templates.command("sync")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@domain_errors
def sync(directory: Path | None) -> None:
    """Load a folder of templates (default: the shipped examples); unchanged ones are left alone."""
    from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir

    svc = load_services()
    # layouts come first, so a template is never saved before the layout it extends
    for content in load_template_dir(directory or EXAMPLE_TEMPLATES_DIR):
        current = svc.templates.head(content.name, content.locale, cached=False)
        if current is not None and current.model_dump(exclude={"version"}) == content.model_dump():
            click.echo(f"  {content.name} ({content.locale}): unchanged, version {current.version}")
            continue
        saved = svc.templates.save(content)
        click.echo(f"  {content.name} ({content.locale}): saved version {saved.version}")


@templates.command("list")
def list_templates() -> None:
    """Latest version of each template and locale."""
    for tpl in load_services().templates.list():
        click.echo(f"{tpl.name:<24} {tpl.locale:<6} v{tpl.version:<4} {tpl.category}")
