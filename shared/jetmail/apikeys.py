"""API keys: created once, shown once, stored only as a SHA-256 digest.

A key reads ``jm_<key id>_<secret>``; the key id finds the record in one GetItem and the digest of
the whole key is compared in constant time. The secret carries 256 bits of randomness, so a plain
digest (not a slow password hash) is the right tool: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel

from jetmail.storage.table import ConditionFailed, Table

Scope = Literal["admin", "send"]
SCOPES: tuple[Scope, ...] = ("admin", "send")
_KEY_RE = re.compile(r"^jm_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


class ApiKey(BaseModel):
    key_id: str
    name: str
    scopes: list[Scope]
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeys:
    def __init__(self, table: Table) -> None:
        self.table = table

    def create(self, name: str, *, scopes: list[Scope] | None = None) -> tuple[ApiKey, str]:
        """Return the stored key and its plaintext (shown to the caller once, never stored)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("key name must be 1-100 characters")
        scopes = scopes or ["admin"]
        for scope in scopes:
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {scope!r} (expected one of {', '.join(SCOPES)})")
        key_id = secrets.token_hex(6)
        token = f"jm_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(key_id=key_id, name=name, scopes=scopes, created_at=datetime.now(UTC).isoformat())
        self.table.put(
            {"pk": f"APIKEY#{key_id}", "sk": "APIKEY", "gsi1pk": "APIKEYS", "gsi1sk": key.created_at,
             "digest": _digest(token), **key.model_dump()},
            condition="attribute_not_exists(pk)",
        )
        return key, token

    def authenticate(self, token: str) -> ApiKey | None:
        match = _KEY_RE.match(token or "")
        if not match:
            return None
        item = self.table.get(f"APIKEY#{match.group(1)}", "APIKEY")
        if item is None or not hmac.compare_digest(item["digest"], _digest(token)):
            return None
        key = ApiKey.model_validate(item)
        return key if key.active else None

    def revoke(self, key_id: str) -> bool:
        try:
            self.table.update(
                f"APIKEY#{key_id}", "APIKEY", expression="SET revoked_at = :now",
                params={":now": datetime.now(UTC).isoformat()},
                condition="attribute_exists(pk) AND attribute_not_exists(revoked_at)",
            )
        except ConditionFailed:
            return False
        return True

    def list(self) -> list[ApiKey]:
        return [ApiKey.model_validate(i) for i in self.table.query_all(pk="APIKEYS", index="gsi1")]
