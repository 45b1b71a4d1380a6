"""Campaign signals on NATS KV: the state every worker checks before each send, and one claim per
recipient per run.

DynamoDB stays the source of truth for a campaign's state; the KV copy is what makes pause and
cancel take effect within a second on batches already queued, without a DynamoDB read per batch.

A claim (``create`` on ``<campaign>.<run>.<hash of the address>``) is taken before a recipient is
sent to and settled to ``sent|<batch>|<pos>`` (or ``failed|…``) after. ``create`` fails when the key
exists, so a recipient planned twice (two segments, a plan run twice, a batch redelivered) is sent
to once. A claim still ``sending`` by the same batch when that batch is redelivered means its worker died
mid-send: it is sent again (the same rule as transactional mail), never dropped. A claim held by
another batch is left alone: that recipient is somebody else's.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

STATE_BUCKET = "jetmail_campaign_state"
CLAIMS_BUCKET = "jetmail_campaign_claims"
CLAIM_TTL_S = 30 * 24 * 3600
# a cluster electing a new leader after losing a node answers none of these for some seconds
CLUSTER_HICCUPS = (NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)
SETTLE_PATIENCE_S = 60.0


async def ensure_buckets(js: Any, *, replicas: int = 1) -> None:
    from jetmail.reputation import BUCKET as REPUTATION_BUCKET
    from jetmail.reputation import BUCKET_TTL_S as REPUTATION_TTL_S

    for bucket, ttl in ((STATE_BUCKET, None), (CLAIMS_BUCKET, CLAIM_TTL_S), (REPUTATION_BUCKET, REPUTATION_TTL_S)):
        try:
            await js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=ttl, history=1, replicas=replicas,
                                                     storage=StorageType.FILE))


async def publish_state(js: Any, campaign_id: str, state: str) -> None:
    kv = await js.key_value(STATE_BUCKET)
    await kv.put(campaign_id, state.encode())


class StateBoard:
    """Per worker process: a campaign's state, re-read from KV at most every ``ttl`` seconds."""

    def __init__(self, js: Any, *, ttl: float = 0.25) -> None:
        self.js = js
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._kv: Any = None

    async def marketing_stopped(self) -> bool:
        """Whether the reputation monitor has stopped all marketing (re-read at most every ``ttl``)."""
        from jetmail.reputation import read_state

        hit = self._cache.get("\x00reputation")
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl:
            return hit[1] == "stopped"
        stopped = bool((await read_state(self.js)).get("marketing_stopped"))
        self._cache["\x00reputation"] = (now, "stopped" if stopped else None)
        return stopped

    async def state(self, campaign_id: str) -> str | None:
        hit = self._cache.get(campaign_id)
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        if self._kv is None:
            self._kv = await self.js.key_value(STATE_BUCKET)
        try:
            entry = await self._kv.get(campaign_id)
            value = entry.value.decode() if entry.value else None
        except KeyNotFoundError:
            value = None
        self._cache[campaign_id] = (now, value)
        return value


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    revision: int | None  # None: held by someone else (see ``existing``)
    existing: str | None = None


def claim_key(campaign_id: str, run: str, email: str) -> str:
    return f"{campaign_id}.{run}.{hashlib.sha256(email.lower().encode()).hexdigest()[:32]}"


class Claims:
    def __init__(self, js: Any) -> None:
        self.js = js
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await self.js.key_value(CLAIMS_BUCKET)
        return self._kv

    async def take(self, campaign_id: str, run: str, email: str, *, owner: str) -> Claim:
        """Claim ``email`` for the batch ``owner``; a claim held by an earlier attempt of the same batch
        that never settled (its worker died) is taken over, any other existing claim is returned."""
        kv = await self._bucket()
        key = claim_key(campaign_id, run, email)
        mine = f"sending|{owner}".encode()
        try:
            return Claim(key=key, revision=await kv.create(key, mine))
        except KeyWrongLastSequenceError:
            entry = await kv.get(key)
            if entry.value == mine:
                try:
                    return Claim(key=key, revision=await kv.update(key, mine, last=entry.revision))
                except KeyWrongLastSequenceError:
                    entry = await kv.get(key)
            return Claim(key=key, revision=None, existing=entry.value.decode() if entry.value else "")

    async def settle(self, claim: Claim, outcome: str, *, patience: float = SETTLE_PATIENCE_S) -> None:
        """Record what became of a claimed recipient. The mail has already gone: giving up here would make
        the batch's retry send it again, so a cluster in the middle of a leader election is waited out."""
        kv = await self._bucket()
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                await kv.put(claim.key, outcome.encode())
                return
            except CLUSTER_HICCUPS:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
