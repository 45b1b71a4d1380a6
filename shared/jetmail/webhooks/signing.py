"""Standard Webhooks signatures (https://www.standardwebhooks.com), byte for byte what the
``standardwebhooks`` package verifies: ``v1,`` and the base64 HMAC-SHA256 of ``<id>.<timestamp>.<body>``
under the base64-decoded secret (after its ``whsec_`` prefix), one per secret, space separated."""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Sequence

from jetmail.webhooks.endpoints import SECRET_PREFIX


@functools.lru_cache(maxsize=256)
def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(_key(secret), signed, "sha256")).decode()


def headers(secrets: Sequence[str], *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three ``webhook-*`` headers of one delivery, signed by every secret given (rotation)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id=msg_id, timestamp=timestamp, body=body) for s in secrets),
    }
