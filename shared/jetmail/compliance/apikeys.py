"""API keys: created once, shown once, stored only as a SHA-256 digest.

A key reads ``jm_<key id>_<secret>``; the key id finds the record in one GetItem and the digest of
the whole key is compared in constant time. The secret carries 256 bits of randomness, so a plain
digest (not a slow password hash) is the right tool: there is nothing to brute-force.

Rotation gives a key a new secret and keeps its id, name, scopes and rate limit; the previous secret's
digest stays on the record with an expiry (the grace period) and is accepted until then. Revocation
is one conditional write.

The API authenticates with ``cached=True``: a token's verdict (the key, or a refusal) is kept in the
process for ``cache_s`` seconds (``JETMAIL_API_KEY_CACHE_S``), keyed by the token's digest, so a busy
client costs one GetItem per container every few seconds rather than one per request. A revocation,
rotation or limit change made elsewhere therefore reaches a warm API container within ``cache_s``;
made through this object (the same process), it drops the key's cached verdicts at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed, Table

Scope = Literal["admin", "send"]
SCOPES: tuple[Scope, ...] = ("admin", "send")
_KEY_RE = re.compile(r"^jm_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
# verdicts kept at most: a flood of made-up tokens cannot grow the cache without bound
_CACHE_MAX = 10_000


class ApiKey(BaseModel):
    key_id: str
    name: str
    scopes: list[Scope]
    created_at: str
    revoked_at: str | None = None
    rotated_at: str | None = None
    # requests per minute for this key; None: the API's default (settings.api_rate_per_minute)
    rate_per_minute: int | None = Field(default=None, ge=1)
    # when the secret the last rotation replaced stops working (a rotation with a grace period)
    previous_expires_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def grace_ends_at(self, now: datetime | None = None) -> str | None:
        """When the replaced secret stops working, if it still works now; None otherwise."""
        if self.revoked_at or not self.previous_expires_at:
            return None
        ends = datetime.fromisoformat(self.previous_expires_at)
        return self.previous_expires_at if ends > (now or datetime.now(UTC)) else None

    def allows(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(key_id: str) -> str:
    return f"jm_{key_id}_{secrets.token_urlsafe(32)}"


class KeyNotFound(LookupError):
    """No active key with that id (never created, or revoked)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no active key {key_id!r}")


class ApiKeys:
    def __init__(self, table: Table, *, cache_s: float = 0.0) -> None:
        self.table = table
        self.cache_s = cache_s
        # token digest -> (monotonic expiry, key id, the key or None for a refusal)
        self._cache: dict[str, tuple[float, str, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, *, scopes: list[Scope] | None = None,
               rate_per_minute: int | None = None) -> tuple[ApiKey, str]:
        """Return the stored key and its plaintext (shown to the caller once, never stored)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("key name must be 1-100 characters")
        scopes = scopes or ["admin"]
        for scope in scopes:
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {scope!r} (expected one of {', '.join(SCOPES)})")
        _check_rate(rate_per_minute)
        key_id = secrets.token_hex(6)
        token = _new_token(key_id)
        key = ApiKey(key_id=key_id, name=name, scopes=scopes, created_at=datetime.now(UTC).isoformat(),
                     rate_per_minute=rate_per_minute)
        self.table.put(
            keys.api_key(key_id).item(gsi1pk=keys.API_KEYS, gsi1sk=key.created_at, digest=_digest(token),
                                      **key.model_dump(exclude_none=True)),
            condition="attribute_not_exists(pk)",
        )
        return key, token

    def authenticate(self, token: str, *, cached: bool = False) -> ApiKey | None:
        """The active key this token is, or None. ``cached``: answer from this process's verdicts of
        the last ``cache_s`` seconds when there is one (the API's per-request check)."""
        match = _KEY_RE.match(token or "")
        if not match:
            return None
        digest = _digest(token)
        if cached and self.cache_s > 0:
            with self._lock:
                hit = self._cache.get(digest)
            if hit is not None and hit[0] > time.monotonic():
                return hit[2]
        key = self._verify(match.group(1), digest)
        if self.cache_s > 0:
            self._remember(digest, match.group(1), key)
        return key

    def _verify(self, key_id: str, digest: str) -> ApiKey | None:
        item = self.table.get(*keys.api_key(key_id))
        if item is None or item.get("revoked_at"):
            return None
        if not hmac.compare_digest(item["digest"], digest):
            # the secret a rotation replaced, until its grace period ends
            previous, until = item.get("previous_digest"), item.get("previous_expires_at")
            if not (previous and until and datetime.now(UTC) < datetime.fromisoformat(until)
                    and hmac.compare_digest(previous, digest)):
                return None
        return ApiKey.model_validate(item)

    def _remember(self, digest: str, key_id: str, key: ApiKey | None) -> None:
        now = time.monotonic()
        expires = now + self.cache_s
        if key is not None and key.previous_expires_at and key.grace_ends_at() is not None:
            # a secret in its grace period is not kept past the period's end
            left = (datetime.fromisoformat(key.previous_expires_at) - datetime.now(UTC)).total_seconds()
            expires = min(expires, now + max(left, 0.0))
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache = {d: v for d, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
            self._cache[digest] = (expires, key_id, key)

    def _forget(self, key_id: str) -> None:
        """Drop this process's verdicts on a key: its change shows here on the next request."""
        with self._lock:
            self._cache = {d: v for d, v in self._cache.items() if v[1] != key_id}

    def rotate(self, key_id: str, *, grace: timedelta = timedelta(0)) -> tuple[ApiKey, str]:
        """Give the key a new secret and return it with the plaintext (shown once). The previous secret
        keeps working for ``grace`` (zero: it stops at once); a secret replaced earlier stops now."""
        if grace < timedelta(0):
            raise ValueError("the grace period must not be negative")
        item = self.table.get(*keys.api_key(key_id), consistent=True)
        if item is None or item.get("revoked_at"):
            raise KeyNotFound(key_id)
        token = _new_token(key_id)
        now = datetime.now(UTC)
        params: dict[str, str] = {":new": _digest(token), ":old": item["digest"], ":now": now.isoformat()}
        if grace > timedelta(0):
            expression = ("SET digest = :new, previous_digest = :old, previous_expires_at = :until, "
                          "rotated_at = :now")
            params[":until"] = (now + grace).isoformat()
        else:
            expression = "SET digest = :new, rotated_at = :now REMOVE previous_digest, previous_expires_at"
        try:
            # the digest condition makes two rotations at once fail one of them rather than lose a secret
            updated = self.table.update(*keys.api_key(key_id), expression=expression, params=params,
                                        condition="attribute_exists(pk) AND attribute_not_exists(revoked_at) "
                                                  "AND digest = :old")
        except ConditionFailed:
            raise KeyNotFound(key_id) from None
        self._forget(key_id)
        return ApiKey.model_validate(updated), token

    def set_rate_limit(self, key_id: str, rate_per_minute: int | None) -> None:
        """Set this key's requests per minute; None returns it to the API's default."""
        _check_rate(rate_per_minute)
        if rate_per_minute is None:
            expression, params = "REMOVE rate_per_minute", None
        else:
            expression, params = "SET rate_per_minute = :rate", {":rate": rate_per_minute}
        try:
            self.table.update(*keys.api_key(key_id), expression=expression, params=params,
                              condition="attribute_exists(pk) AND attribute_not_exists(revoked_at)")
        except ConditionFailed:
            raise KeyNotFound(key_id) from None
        self._forget(key_id)

    def revoke(self, key_id: str) -> bool:
        try:
            self.table.update(
                *keys.api_key(key_id), expression="SET revoked_at = :now",
                params={":now": datetime.now(UTC).isoformat()},
                condition="attribute_exists(pk) AND attribute_not_exists(revoked_at)",
            )
        except ConditionFailed:
            return False
        self._forget(key_id)
        return True

    def get(self, key_id: str) -> ApiKey | None:
        """One key by id (consistent: a revocation or rotation shows at once), never its secret."""
        item = self.table.get(*keys.api_key(key_id), consistent=True)
        return ApiKey.model_validate(item) if item is not None else None

    def list(self) -> list[ApiKey]:
        return [ApiKey.model_validate(i) for i in self.table.query_all(pk=keys.API_KEYS, index="gsi1")]


def _check_rate(rate_per_minute: int | None) -> None:
    if rate_per_minute is not None and rate_per_minute < 1:
        raise ValueError(f"rate_per_minute must be at least 1, got {rate_per_minute}")
