"""Remote mode: a management command run against a deployed API with ``--api-url`` (or ``JETMAIL_API_URL``)
and the key in ``JETMAIL_API_KEY``, through ``jetmail.client``, instead of against local services.

A command that supports it chooses its backend once, by whether an API URL is given, and shares everything
else (options, validation, output) between the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from jetmail.client import ApiError, Client, TransportError, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])

api_url_option = click.option(
    "--api-url", envvar="JETMAIL_API_URL", metavar="URL",
    help="Run against this jetmail API (env JETMAIL_API_URL), authenticated with the key in JETMAIL_API_KEY, "
         "instead of against the local services.")


def connect(api_url: str) -> Client:
    """A client for ``api_url`` with the key in ``JETMAIL_API_KEY``, closed when the command ends. The key is
    read from the environment only, so it stays out of shell history and the process list."""
    key = os.environ.get("JETMAIL_API_KEY", "").strip()
    if not key:
        raise click.UsageError("--api-url needs an API key in JETMAIL_API_KEY (jetmail keys create)")
    client = Client(api_url, key)
    click.get_current_context().call_on_close(client.close)
    return client


def describe(exc: ApiError | TransportError) -> str:
    """What went wrong, for the ``error:`` line: the status and the API's detail with each invalid field of a
    422, and for a refused key where the key came from."""
    if isinstance(exc, TransportError):
        return f"the API did not answer: {exc}"
    fields = [f"{e.get('field', '?')}: {e.get('message', '')}" for e in exc.errors if isinstance(e, dict)]
    hint = " (the key in JETMAIL_API_KEY)" if isinstance(exc, Unauthorized) else ""
    return "\n  ".join([f"{exc.status} {exc.detail}{hint}", *fields])


def api_errors(fn: F) -> F:
    """Turn the API's refusals and its silence into ``error: ...`` lines with exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ApiError, TransportError) as exc:
            raise click.ClickException(describe(exc)) from None

    return wrapper  # type: ignore[return-value]
