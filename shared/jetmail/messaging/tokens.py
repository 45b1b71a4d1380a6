"""Signed, URL-safe tokens for unsubscribe and tracking links.

A token is ``<base64url(json payload)>.<base64url(HMAC-SHA256(purpose + payload))[:22]>``; the
purpose is part of the MAC so an open-pixel token can never be replayed as an unsubscribe token.
Verification is constant-time and returns ``None`` for anything tampered with or malformed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from pydantic import SecretStr

_SIG_LEN = 22  # 132 bits of the MAC: plenty against forgery, short enough for URLs
# one encoder for every token: ``json.dumps`` with options makes a new one per call (a mail signs a dozen links)
_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: SecretStr | str) -> None:
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self._key = hashlib.sha256(b"jetmail-tokens\x00" + raw.encode()).digest()

    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.digest(self._key, f"{purpose}\x00{body}".encode(), "sha256"))[:_SIG_LEN]

    def digest(self, purpose: str, data: bytes) -> bytes:
        """The raw HMAC-SHA256 of ``data`` for ``purpose``, for compact tokens of their own (VERP return paths)."""
        return hmac.digest(self._key, purpose.encode() + b"\x00" + data, "sha256")

    def sign(self, purpose: str, payload: dict[str, Any]) -> str:
        body = _b64(_ENCODE(payload).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def verify(self, purpose: str, token: str) -> dict[str, Any] | None:
        body, dot, sig = token.rpartition(".")
        if not dot or not body or len(token) > 4096:
            return None
        if not hmac.compare_digest(sig, self._mac(purpose, body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            return None
        return payload if isinstance(payload, dict) else None
