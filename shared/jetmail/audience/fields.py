"""Checks that request models share: text that must stay on one line, and time zone names (as functions,
and as the field types ``OneLine`` and ``TimeZone``)."""

from __future__ import annotations

from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator

Text = TypeVar("Text", str, str | None)


def one_line(value: Text) -> Text:
    """``value`` as it is; ValueError when it holds a line break or NUL (names end up in headers and rows)."""
    if value is not None and any(c in value for c in "\r\n\x00"):
        raise ValueError("must not contain line breaks")
    return value


def time_zone(value: str | None) -> str | None:
    """``value`` as it is; ValueError when it is not an IANA time zone (``Europe/Berlin``)."""
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


OneLine = Annotated[str, AfterValidator(one_line)]
"""A model field of text that ends up in a header or a row: no line breaks, no NUL."""
TimeZone = Annotated[str, AfterValidator(time_zone)]
"""A model field naming an IANA time zone."""
