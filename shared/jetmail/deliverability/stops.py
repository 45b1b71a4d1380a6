"""Stop events: every suppression, list unsubscribe, complaint and erasure, published on a JetStream stream.

DynamoDB keeps the suppression list and the memberships; this stream is how a *running* campaign learns
of a change without asking DynamoDB per recipient. One subject per address and scope,
``stops.<pseudonym digest>.<scope>`` (scope ``all``, ``erased`` or a list id), and the stream keeps one
message per subject: the latest word on that address in that scope (stopped or lifted). So the stream
never forgets a current stop, and replaying it from any point yields the latest state of every address
that changed since that point.

Subjects and payloads carry only the keyed pseudonym of an address
(``jetmail.deliverability.suppressions.Pseudonymizer``), never the address: an erased person
leaves nothing readable here either.

Writers publish *before* they write DynamoDB. A stop whose DynamoDB write then fails still stops running
campaigns (the safe side); a planner that read DynamoDB just before a write landed is covered because a
campaign replays the stream from a margin before its plan began (``PLAN_MARGIN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from nats.js import api
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from jetmail.queue import SyncClient

logger = logging.getLogger("jetmail.deliverability.stops")


class Pseudonyms(Protocol):
    """What a stop needs of ``jetmail.deliverability.suppressions.Pseudonymizer``: an address's keyed digest."""

    def digest(self, email: str) -> str: ...


PREFIX = "stops"
SCOPE_ALL = "all"  # the global suppression list
SCOPE_ERASED = "erased"  # an erasure: never lifted
# a campaign replays stop events from this long before its plan began: more than any write between a
# stop's publish and its DynamoDB write can take, so nothing the planner missed falls before the replay
PLAN_MARGIN = timedelta(minutes=5)
CATCH_UP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class StopChange:
    """One change to publish: ``email`` is stopped (or lifted, ``stop=False``) in ``scope``."""

    email: str
    scope: str
    stop: bool = True
    reason: str | None = None


def subject(digest: str, scope: str) -> str:
    return f"{PREFIX}.{digest}.{scope}"


def stream_config(name: str, *, replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=name,
        description="jetmail stop events: the latest suppression, unsubscribe or erasure per address and scope",
        subjects=[f"{PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
    )


async def ensure_stream(js: Any, name: str, *, replicas: int = 1) -> None:
    """Create or update the stream (idempotent): ``jetmail init``, the local stack and every worker call it."""
    config = stream_config(name, replicas=replicas)
    try:
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)


def plan_start() -> str:
    """The replay start a campaign plan gives its batches (RFC 3339, UTC)."""
    return (datetime.now(UTC) - PLAN_MARGIN).isoformat()


class StopFeed:
    """Publishes stop events for the synchronous stores (API, CLI, feedback); waits for the stream's ack, so
    a stop that was answered is one every worker will see."""

    def __init__(self, queue: SyncClient, *, pseudonyms: Pseudonyms) -> None:
        self.queue = queue
        self.pseudonyms = pseudonyms

    def publish(self, changes: Sequence[StopChange]) -> None:
        if not changes:
            return
        at = datetime.now(UTC).isoformat()
        messages = [(subject(self.pseudonyms.digest(c.email), c.scope),
                     json.dumps({"stop": c.stop, "reason": c.reason, "at": at}).encode()) for c in changes]

        async def send(q: Any) -> None:
            await asyncio.gather(*(q.js.publish(s, body) for s, body in messages))

        self.queue.run(send)


class LiveStops:
    """Per worker process: every stop event since the earliest replay start any of its batches asked for,
    then live. Lookups are in memory: no request per recipient.

    ``catch_up(since)`` makes sure the index holds every event from ``since`` to the moment of the call
    (one stream-info request, per batch); events that arrive later apply as they come, so a batch already
    under way honours them too. Each (address, scope) keeps the event with the highest stream sequence,
    so replaying an earlier range again never undoes a later change."""

    def __init__(self, js: Any, *, stream: str, pseudonyms: Pseudonyms) -> None:
        self.js = js
        self.stream = stream
        self.pseudonyms = pseudonyms
        self._index: dict[tuple[str, str], tuple[int, str | None]] = {}  # -> (seq, reason if stopped)
        self._floor: datetime | None = None  # replay start of the running subscription
        self._applied = 0  # every event up to this stream sequence is in the index
        self._consumer_seq = 0  # the consumer sequence of the last event applied
        self._sub: Any = None
        self._lock = asyncio.Lock()
        self._progress = asyncio.Event()

    async def catch_up(self, since: str | None, *, patience: float = CATCH_UP_TIMEOUT_S) -> None:
        """Hold every event from ``since`` (None: from the stream's first) up to now, or raise TimeoutError."""
        start = datetime.fromisoformat(since) if since else None
        async with self._lock:
            if self._sub is None or (self._floor is not None and (start is None or start < self._floor)):
                await self._follow(start)
        target = (await self.js.stream_info(self.stream)).state.last_seq
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while self._applied < target:
            if await self._drained(target):
                self._applied = max(self._applied, target)
                break
            if loop.time() > deadline:
                raise TimeoutError(f"stop events not caught up to {target} within {patience:.0f}s")
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 0.05)

    async def _drained(self, target: int) -> bool:
        """The consumer has passed ``target`` and every message it delivered was applied: the events up to
        ``target`` that it skipped are older than the replay start (the newest may be, so none arrives)."""
        info = await self._sub.consumer_info()
        return bool(info.delivered.stream_seq >= target and info.delivered.consumer_seq == self._consumer_seq)

    async def _follow(self, start: datetime | None) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        self._applied = self._consumer_seq = 0
        if start is None:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                        opt_start_time=start.astimezone(UTC))
        self._sub = await self.js.subscribe(f"{PREFIX}.>", stream=self.stream, cb=self._on_event,
                                            ordered_consumer=True, config=config, idle_heartbeat=5.0)
        self._floor = start
        logger.info("following stop events from %s", start.isoformat() if start else "the stream's start")

    async def _on_event(self, msg: Any) -> None:
        seq = msg.metadata.sequence.stream
        _, _, rest = msg.subject.partition(".")
        digest, _, scope = rest.partition(".")
        try:
            body = json.loads(msg.data)
            reason = (body.get("reason") or "suppressed") if body.get("stop") else None
        except (ValueError, AttributeError):
            logger.warning("ignoring a malformed stop event on %s", msg.subject)
        else:
            key = (digest, scope)
            held = self._index.get(key)
            if held is None or held[0] < seq:
                self._index[key] = (seq, reason)
        self._applied = max(self._applied, seq)
        self._consumer_seq = msg.metadata.sequence.consumer
        self._progress.set()

    def stops(self, email: str, *, list_id: str | None = None) -> dict[str, str]:
        """{scope: reason} of the stops in force for ``email`` (global, erased, and ``list_id``'s)."""
        digest = self.pseudonyms.digest(email)
        found: dict[str, str] = {}
        for scope in (SCOPE_ERASED, SCOPE_ALL, list_id):
            if scope is None:
                continue
            held = self._index.get((digest, scope))
            if held is not None and held[1] is not None:
                found[scope] = held[1]
        return found

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: S110 - the connection may already be closing
                pass
            self._sub = None
