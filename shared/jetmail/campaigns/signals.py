"""Campaign signals on NATS: the state every worker follows, one lease per batch, and a journal of outcomes.

DynamoDB stays the source of truth for a campaign's state; the KV copy (``STATE_BUCKET``) is what makes
pause and cancel take effect within milliseconds on batches already queued: each worker process watches
the bucket (``StateBoard``), so checking the state before a send is a dictionary lookup.

A batch attempt first takes the batch's lease (``LEASES_BUCKET``, key ``<campaign>.<run>.<batch>``): one
KV ``create`` with a per-key TTL of the job's ack wait, refreshed by the holder with the job's heartbeat.
A second attempt of the same batch (a redelivery, a duplicate job) finds the lease live and retries later;
a lease whose holder died expires on the server and the next attempt takes it. The holder stops starting
sends once its last confirmed refresh is half a TTL old, so its lease never lapses while it could still
start one: two workers never send the same batch at the same time.

What became of each recipient (sent with the provider's id, failed with the reason, skipped with the reason)
is appended to the batch's journal with pipelined JetStream publishes, whose acks are all awaited before the
batch records its result. The journal is the stream of a KV bucket (``JOURNAL_BUCKET``, file storage, the
stream replicas, kept as long as the leases): a batch's entries are the subjects
``$KV.jetmail_campaign_journal.<campaign>.<run>.<batch>.<position>``, read back with one consumer on
``<...batch>.*``. The outcomes of one batch that come in during the same turn of the event loop (SMTP answers
read together) are published as one message, a JSON array, under the first one's position; a lone outcome is a
JSON object, as every entry was before. (A bucket rather than a stream of its own because the workers' NATS
permissions, ``infra/nats/common.conf``, allow them JetStream and KV subjects only.) A later attempt of the
batch reads the journal first and skips, and reports, everyone in it. A recipient not journaled is sent again:
a worker that died between the SMTP server's 250 and the journal publish mails that recipient twice, with the
same Message-ID (the same rule as transactional mail), never zero times.

A recipient planned twice across batches (a plan re-executed after a crash) is the planner's business:
a re-executed plan excludes everyone its recorded batches hold (``campaigns.jobs.campaign_plan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from jetmail.deliverability.reputation import read_state
from jetmail.kv import CAMPAIGN_JOURNAL, CAMPAIGN_LEASES, CAMPAIGN_STATE, Bucket, KeyExists, Kv, RevisionMismatch

logger = logging.getLogger("jetmail.campaigns")

# the buckets are declared in ``jetmail.kv.buckets``; these names stay for the modules that read them
STATE_BUCKET = CAMPAIGN_STATE.name
LEASES_BUCKET = CLAIMS_BUCKET = CAMPAIGN_LEASES.name
# the journal is a KV bucket used as a stream: one key per (batch, position), a batch's entries under the
# key prefix ``<campaign>.<run>.<batch>.``; the workers' NATS permissions allow JetStream and KV subjects only
JOURNAL_BUCKET = CAMPAIGN_JOURNAL.name
JOURNAL_STREAM = f"KV_{JOURNAL_BUCKET}"
JOURNAL_PREFIX = f"$KV.{JOURNAL_BUCKET}"
# a cluster electing a new leader after losing a node answers none of these for some seconds
CLUSTER_HICCUPS = (NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)
SETTLE_PATIENCE_S = 60.0


async def publish_state(kv: Kv | JetStreamContext, campaign_id: str, state: str) -> None:
    """Mirror a campaign's state for the workers' boards: one KV put."""
    await (await Kv.of(kv).bucket(CAMPAIGN_STATE)).put(campaign_id, state.encode())


class StateBoard:
    """Per worker process: every campaign's state, followed with one KV watch on the state bucket.

    Until the watch has delivered a campaign's value (it is starting, or reconnecting), ``state`` reads the
    key itself, at most every ``ttl`` seconds per campaign."""

    def __init__(self, kv: Kv | JetStreamContext, *, ttl: float = 0.25) -> None:
        self.kv = Kv.of(kv)
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._watched: dict[str, str | None] = {}
        self._watch_task: asyncio.Task[None] | None = None

    def _ensure_watch(self) -> None:
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            bucket = await self.kv.bucket(CAMPAIGN_STATE)
            async with contextlib.aclosing(bucket.watch()) as changes:
                async for change in changes:
                    self._watched[change.key] = (change.value or b"").decode() or None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next state() starts it again; meanwhile it reads the keys
            logger.warning("campaign state watch ended: %s", exc or type(exc).__name__)
        finally:
            self._watched.clear()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)

    async def marketing_stopped(self) -> bool:
        """Whether the reputation monitor has stopped all marketing (re-read at most every ``ttl``)."""
        hit = self._cache.get("\x00reputation")
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl:
            return hit[1] == "stopped"
        stopped = bool((await read_state(self.kv)).get("marketing_stopped"))
        self._cache["\x00reputation"] = (now, "stopped" if stopped else None)
        return stopped

    async def state(self, campaign_id: str) -> str | None:
        self._ensure_watch()
        if campaign_id in self._watched:
            return self._watched[campaign_id]
        hit = self._cache.get(campaign_id)
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        entry = await (await self.kv.bucket(CAMPAIGN_STATE)).get(campaign_id)
        value = None if entry is None else entry.value.decode() or None
        self._cache[campaign_id] = (now, value)
        return value


# ---- batch leases

class LeaseHeld(Exception):
    """Another attempt holds the batch's lease and is alive: try again once it could have expired."""

    def __init__(self, key: str, holder: str, *, retry_after: float, revision: int | None = None) -> None:
        super().__init__(f"batch {key} is being sent by {holder or 'another attempt'}")
        self.retry_after = retry_after
        self.revision = revision  # the held lease's last write: a live holder's moves on every refresh


@dataclass
class Lease:
    key: str
    holder: str
    revision: int
    ttl: int
    # when the request behind the last confirmed write left: the server's expiry is later than this + ttl
    confirmed: float = field(default_factory=time.monotonic)
    lost: bool = False

    @property
    def valid(self) -> bool:
        """Whether the holder may still start a send: a lease half its TTL past its last confirmation
        (refreshes failing) is not, so it stops well before the server lets anyone else take the batch."""
        return not self.lost and time.monotonic() - self.confirmed < self.ttl / 2


def lease_key(campaign_id: str, run: str, batch: int | str) -> str:
    """``<campaign>.<run>.<batch>`` for a batch; ``<campaign>.<run>.plan`` serialises a run's plan."""
    return f"{campaign_id}.{run}.{batch}"


class Leases:
    def __init__(self, kv: Kv | JetStreamContext, *, ttl: float) -> None:
        self.kv = Kv.of(kv)
        self.ttl = max(1, math.ceil(ttl))  # per-key TTLs are whole seconds

    async def _bucket(self) -> Bucket:
        return await self.kv.bucket(CAMPAIGN_LEASES)

    async def take(self, key: str, *, holder: str, patience: float = 2.0) -> Lease:
        """One KV create; raises LeaseHeld when a live lease exists (a dead holder's has expired).

        A job redelivered because its worker died arrives an ack wait after that worker's last heartbeat,
        which it sent right after its last refresh: the lease expires about then, so a held lease is asked
        again for ``patience`` seconds before the attempt is given up (a retry costs one of the job's)."""
        bucket = await self._bucket()
        deadline = time.monotonic() + patience
        while True:
            started = time.monotonic()
            try:
                revision = await bucket.create(key, holder.encode(), ttl=self.ttl)
            except KeyExists:
                if time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                    continue
                entry = await bucket.get(key)
                current, held = (entry.value.decode(), entry.revision) if entry is not None else ("", None)
                raise LeaseHeld(key, current, retry_after=float(self.ttl), revision=held) from None
            return Lease(key=key, holder=holder, revision=revision, ttl=self.ttl, confirmed=started)

    async def take_over(self, key: str, *, holder: str, beat: Callable[[], Awaitable[None]]) -> Lease:
        """Take the lease, waiting out a holder that stopped refreshing it (an execution that ended without
        its release landing, as during a leader election); raises LeaseHeld once the holder refreshes it,
        since a live holder finishes its own work. Waits at most a TTL and a little, beating ``beat``."""
        deadline = time.monotonic() + self.ttl + 2
        first: int | None = None
        while True:
            try:
                return await self.take(key, holder=holder, patience=0)
            except LeaseHeld as exc:
                if exc.revision is not None:
                    first = first if first is not None else exc.revision
                    if exc.revision != first or time.monotonic() > deadline:
                        raise
            await beat()
            await asyncio.sleep(0.5)

    async def refresh(self, lease: Lease) -> None:
        """Push the lease's expiry a TTL further (one conditional write); marks it lost when someone else
        holds it now."""
        started = time.monotonic()
        try:
            lease.revision = await (await self._bucket()).update(lease.key, lease.holder.encode(),
                                                                 revision=lease.revision, ttl=lease.ttl)
        except RevisionMismatch:
            lease.lost = True
            return
        lease.confirmed = started

    async def release(self, lease: Lease) -> None:
        """Let the next attempt in at once (it expires anyway when this fails)."""
        if lease.lost:
            return
        with contextlib.suppress(Exception):
            # removed only if the lease is still ours, by a marker that expires itself: a finished
            # campaign leaves nothing in the bucket
            await (await self._bucket()).delete(lease.key, revision=lease.revision, ttl=lease.ttl)

    async def keep(self, lease: Lease, *, beat: Any = None) -> None:
        """Refresh ``lease`` (and beat the job's heartbeat) every quarter TTL until cancelled or lost."""
        while not lease.lost:
            await asyncio.sleep(lease.ttl / 4 if lease.valid else 0.5)
            try:
                await self.refresh(lease)
                if beat is not None:
                    await beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a leader election: the next round tries again, sooner
                logger.warning("cannot refresh lease %s: %s", lease.key, exc or type(exc).__name__)
                await asyncio.sleep(0.5)


# ---- journal of outcomes

def journal_subject(campaign_id: str, run: str, batch: int) -> str:
    """The batch's subject prefix in the journal: its entries are ``<prefix>.<position>``."""
    return f"{JOURNAL_PREFIX}.{campaign_id}.{run}.{batch}"


class JournalWriter:
    """The entries of one batch attempt: published without waiting, acks collected by ``flush``.

    Entries appended during one turn of the event loop go out together: the first waits that turn out
    (``asyncio.sleep(0)``), the others join it, and it publishes them as one message under its own position.
    A position heads at most one message: a later attempt of the batch skips every position journaled, so it
    never journals one again, under its own subject or another's. At full speed on two cores that is ~1.4
    outcomes a message, a quarter fewer messages for the server to store; a lone outcome is published one
    turn of the loop later than it was alone, inside the window between the SMTP server's 250 and the ack."""

    def __init__(self, journal: Journal, subject: str) -> None:
        self.journal = journal
        self.subject = subject
        self._pending: list[tuple[str, bytes, asyncio.Future[Any] | None]] = []
        self._joining: list[dict[str, Any]] | None = None

    async def append(self, entry: dict[str, Any]) -> None:
        if self._joining is not None:
            self._joining.append(entry)  # published by the entry that opened this turn's message
            return
        entries = self._joining = [entry]
        try:
            await asyncio.sleep(0)
        finally:
            # closed even when cancelled here: the entries that joined are flush's to publish then
            self._joining = None
            payload = json.dumps(entries if len(entries) > 1 else entry, separators=(",", ":")).encode()
            subject = f"{self.subject}.{entry['p']}"
            pending, slot = self._pending, len(self._pending)
            pending.append((subject, payload, None))
        try:
            future = await self.journal.js.publish_async(subject, payload)
        except Exception as exc:  # not even sent: flush publishes it again
            logger.warning("journal publish to %s failed: %s", self.subject, exc or type(exc).__name__)
            return
        pending[slot] = (subject, payload, future)

    async def flush(self, *, patience: float = SETTLE_PATIENCE_S) -> None:
        """Wait for every entry's ack; re-publish any that failed or went unanswered. The bucket keeps one message
        per subject and a message is the same each time it is published, so one stored after all is replaced
        by its copy: no ``Nats-Msg-Id``, and no de-duplication record per message on the server. The mails have
        gone: giving up here would make a retry send them again, so a cluster in the middle of a leader election
        is waited out."""
        pending, self._pending = self._pending, []
        futures = [f for *_, f in pending if f is not None]
        if futures:
            await asyncio.wait(futures, timeout=self.journal.js._timeout)
        again: list[tuple[str, bytes]] = []
        for subject, payload, future in pending:
            if future is None or not future.done():
                if future is not None:
                    future.cancel()  # frees its slot among the client's pending publishes
                again.append((subject, payload))
            elif future.cancelled() or future.exception() is not None:
                again.append((subject, payload))
        for subject, payload in again:
            await self.journal.publish(subject, payload, patience=patience)


class Journal:
    """Appends and reads the journal bucket's stream directly (its bucket is made with the others)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    def writer(self, campaign_id: str, run: str, batch: int) -> JournalWriter:
        return JournalWriter(self, journal_subject(campaign_id, run, batch))

    async def publish(self, subject: str, payload: bytes, *, patience: float = SETTLE_PATIENCE_S) -> None:
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                await self.js.publish(subject, payload)
                return
            except CLUSTER_HICCUPS:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def read(self, campaign_id: str, run: str, batch: int) -> dict[int, dict[str, Any]]:
        """Position -> entry of everything journaled for the batch (the bucket keeps one per position).
        One stream-info request when there is nothing (a first attempt), one consumer read otherwise."""
        subject = f"{journal_subject(campaign_id, run, batch)}.*"
        info = await self.js.stream_info(JOURNAL_STREAM, subjects_filter=subject)
        count = sum((info.state.subjects or {}).values())
        entries: dict[int, dict[str, Any]] = {}
        if not count:
            return entries
        sub = await self.js.pull_subscribe(subject, stream=JOURNAL_STREAM, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True, inactive_threshold=30))
        try:
            read = 0
            while read < count:
                msgs = await sub.fetch(count - read, timeout=5)
                read += len(msgs)
                for msg in msgs:
                    data = json.loads(msg.data)
                    for entry in data if isinstance(data, list) else [data]:
                        entries.setdefault(int(entry["p"]), entry)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return entries
