"""Opaque page cursors: a small JSON value in URL-safe base64 without padding.

Each list checks the value it gets back (that it names an entry of that list, in the shape it handed
out) before using it as a DynamoDB start key; here is only the packing.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class InvalidCursor(ValueError):
    """A cursor this API did not hand out, or one of another list."""


def pack(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unpack(cursor: str) -> Any:
    """The value ``pack`` was given; InvalidCursor for anything else that is not base64 JSON."""
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and non-ASCII input included
        raise InvalidCursor("cursor is not one this API returned") from None
