"""Management commands grouped under the root ``jetmail`` CLI.

The domain modules that load the templating package (Jinja) are imported inside the commands that use
them, so the other commands start without it (``jetmail.cli``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from jetmail.audience.addresses import InvalidAddress
from jetmail.config import ConfigError, get_settings
from jetmail.services import Services

F = TypeVar("F", bound=Callable[..., Any])


def load_services() -> Services:
    """Settings and services for a command; a missing setting becomes one error line, not a traceback."""
    try:
        return Services(get_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def domain_errors(fn: F) -> F:
    """Turn expected domain errors into `error: ...` lines with exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from jetmail.messaging.messages import IdempotencyConflict, MessageNotFound
        from jetmail.messaging.templates import TemplateConflict, TemplateNotFound
        from jetmail.messaging.templating import TemplateValidationError

        try:
            return fn(*args, **kwargs)
        except TemplateValidationError as exc:
            lines = [f"{p.field}:{p.line or '-'}: {p.message}" for p in exc.problems]
            raise click.ClickException("template rejected:\n  " + "\n  ".join(lines)) from None
        except (TemplateNotFound, MessageNotFound, TemplateConflict, IdempotencyConflict, InvalidAddress,
                ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]
