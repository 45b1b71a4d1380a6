"""Errors raised while checking, preparing and rendering templates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

TemplateField = Literal["subject", "html", "text"]


@dataclass(frozen=True)
class TemplateProblem:
    """One reason a template is refused; ``line`` counts from 1 in the field's source.

    ``dataclasses.asdict(problem)`` is the shape API error responses use.
    """

    field: TemplateField
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.field if self.line is None else f"{self.field}:{self.line}"
        return f"{where}: {self.message}"


class Problem(Protocol):
    """What a refusal lists: a :class:`TemplateProblem`, or a reason of the same shape found elsewhere."""

    @property
    def field(self) -> str: ...

    @property
    def line(self) -> int | None: ...

    @property
    def message(self) -> str: ...


class TemplateValidationError(ValueError):
    """The template is refused; ``problems`` lists every reason found, in source order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid template")


class TemplateRenderError(Exception):
    """Rendering one stored version failed; retrying with the same context fails again."""

    def __init__(self, message: str, *, template: str, field: TemplateField, line: int | None) -> None:
        self.template = template
        self.field: TemplateField = field
        self.line = line
        #: what went wrong, without the template and place
        self.reason = message
        where = field if line is None else f"{field} line {line}"
        super().__init__(f"template {template} ({where}): {message}")


class TemplateLimitError(TemplateRenderError):
    """The render would exceed a :class:`~jetmail.messaging.templating.limits.RenderLimits` bound."""


class TemplateTimeoutError(TemplateLimitError):
    """The render ran past its time budget (``RenderLimits.timeout_s``, or the one the caller gave)."""


class UnsafeHtmlError(TemplateRenderError):
    """The rendered HTML holds script, an event handler or a URL scheme that is not allowed."""


class ReservedContextKeyError(ValueError):
    """The caller's context uses a name the platform fills in for every render."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(sorted(keys))
        super().__init__(f"context keys reserved for the standard context: {', '.join(self.keys)}")


class TemplateNotFoundError(LookupError):
    """No version of the template exists in any acceptable locale."""


class TemplateLoadError(ValueError):
    """A template folder on disk is incomplete or malformed; the message names the path."""
