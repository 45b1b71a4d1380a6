"""``RateLimiter``: per-process token handout over window counters shared in NATS KV.

Counters: one KV key per window (see ``windows``), value ``"<total> <marketing>"``, written only by
compare-and-set with a per-message TTL, so a finished window's key disappears by itself. A worker
takes a batch of tokens with one CAS per window and hands them to its own sends without asking
NATS again. Tokens of a window are handed out only until ``guard`` seconds before the window ends:
a message granted in second N has that long to reach the receiver inside second N. Tokens left at
the end of a window are abandoned (their window is over); tokens of a longer window (minute, hour,
day) that a worker still holds are returned by ``close()``. Sends made inside ``sending()`` that are
still in flight at the end of a second are charged to the next second as well (see
``_charge_carries``), and the guard widens when the event loop runs late.

Shared state besides the counters, each one key: ``<provider>.aimd`` (the effective per-second rate
after throttling), ``<provider>.workers`` (worker id -> last seen, to size batches) and
``<provider>.slowdown`` (a share of the provider limit set by the reputation monitor while the bounce
rate is too high; unlike a throttle it does not recover by itself, only when the monitor lifts it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext

from jetmail.deliverability.ratelimit.config import RateConfig, normalize_domain
from jetmail.deliverability.ratelimit.windows import CATEGORIES, Category, Window, plan
from jetmail.kv import RATE_LIMITS, Bucket, Kv, KvError, RevisionMismatch
from jetmail.messaging.providers.base import TemporaryDeliveryError

log = logging.getLogger("jetmail.deliverability.ratelimit")

# Wake a hair after a window starts, never a hair before it (the loop's timer may fire early).
_EPSILON = 0.001
_MAX_BATCH = 100
_HEARTBEAT_S = 5.0
_WORKER_EXPIRY_S = 15.0
_WORKERS_TTL_S = 120
_AIMD_TTL_S = 3600
_MAX_CAS_ATTEMPTS = 200


class RateLimitError(RuntimeError):
    """The shared counters could not be updated (endless write conflicts)."""


@dataclass(frozen=True, slots=True)
class _Counter:
    revision: int
    total: int
    marketing: int


@dataclass(slots=True)
class _Holding:
    """Tokens of one window this worker took and has not handed out yet."""

    window: Window
    marketing: int = 0
    transactional: int = 0

    def usable(self, category: Category) -> int:
        # transactional mail may take anything; a marketing token it uses only overstates marketing
        return self.marketing + self.transactional if category == "transactional" else self.marketing

    def take(self, category: Category) -> None:
        if category == "transactional" and self.transactional:
            self.transactional -= 1
        else:
            self.marketing -= 1


@dataclass(frozen=True, slots=True)
class _Aimd:
    rate: float
    changed: float = 0.0
    throttled_at: float | None = None
    throttles: int = 0


class RateLimiter:
    """One per worker process and provider; every coroutine of the process shares it.

    ``async with limiter.sending(...)`` around the provider call is the way to send; ``acquire`` waits
    for a token; ``try_acquire`` takes one when it can and otherwise returns the seconds until one may
    be free (a job can nak with that delay instead of holding its slot). Take the token as close to the
    send as possible: a token taken while the send still queues for a connection can arrive late.

    ``kv``: the process's KV adapter, or a JetStream context (the bucket is then made, when missing,
    with ``config.replicas``).
    """

    def __init__(self, kv: Kv | JetStreamContext, config: RateConfig, *, worker_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        if not worker_id:
            raise ValueError("worker_id must not be empty")
        self.config = config
        self.worker_id = worker_id
        self._kv = Kv.of(kv, replicas=config.replicas)
        self._spec = RATE_LIMITS if config.bucket == RATE_LIMITS.name else RATE_LIMITS.named(config.bucket)
        self._clock = clock
        self._store: Bucket | None = None
        self._lock = asyncio.Lock()
        self._holdings: dict[str, _Holding] = {}
        self._exhausted: dict[tuple[str, Category], int] = {}  # (window key, category) -> window end
        self._seen: dict[str, tuple[int, _Counter]] = {}  # window key -> (window end, last known counter)
        configured = config.limits.per_second
        self._aimd = _Aimd(rate=configured) if configured is not None else None
        self._aimd_second: int | None = None
        # the reputation slow-down: a share of *this* worker's provider limit (its SES quota on AWS), so
        # every worker halves what it may really send, whatever the settings default says
        self._slowdown = 1.0
        self._workers = 1
        self._beat_at = -math.inf
        self._demand = 0
        self._second = 0
        self._handed = 0
        self._handed_before = 0
        self._pruned_second = 0
        # sends inside ``sending()``: grant second -> still in flight; second -> finished in it though
        # granted earlier; and the last second whose carry-over this worker has charged
        self._in_flight: Counter[int] = Counter()
        self._landed: Counter[int] = Counter()
        self._carried = 0
        self._charger: asyncio.Task[None] | None = None
        self._lags: deque[float] = deque(maxlen=10)

    # ---- taking tokens
    async def acquire(self, *, category: Category, domain: str = "") -> None:
        """Wait (sleeping until the window that has room) and take one token; never gives up."""
        _check_category(category)
        self._demand += 1
        try:
            while True:
                wait = await self._attempt(category, domain)
                if wait <= 0:
                    return
                await asyncio.sleep(wait)
        finally:
            self._demand -= 1

    @asynccontextmanager
    async def sending(self, *, category: Category, domain: str = "") -> AsyncIterator[None]:
        """``acquire``, then the send inside the block, timed. The preferred way to send: a send still
        in flight when the next second starts is charged to that second too (it may arrive in it), so
        arrivals stay within the limit even when sends slow down; a ``TemporaryDeliveryError`` with
        ``throttled`` reports a throttle, a send that returns reports a success."""
        await self.acquire(category=category, domain=domain)
        second = math.floor(self._clock())
        self._in_flight[second] += 1
        if self._charger is None or self._charger.done():
            self._charger = asyncio.create_task(self._charge_carries(), name="ratelimit-carry")
        try:
            yield
        except TemporaryDeliveryError as exc:
            if exc.throttled:
                await self._quietly(self.report_throttle())
            raise
        else:
            await self._quietly(self.report_success())
        finally:
            self._in_flight[second] -= 1
            if self._in_flight[second] <= 0:
                del self._in_flight[second]
            done = math.floor(self._clock())
            for later in range(max(second + 1, done - 10), done + 1):
                self._landed[later] += 1

    @staticmethod
    async def _quietly(report: Awaitable[None]) -> None:
        # the message went out (or failed for its own reason): a lost report must not turn into a resend
        try:
            await report
        except (KvError, RateLimitError) as exc:
            log.warning("rate limiter: could not record the send: %s", exc or type(exc).__name__)

    def _carry(self, second: int) -> int:
        """Sends granted before ``second`` that were still in flight when it began."""
        return sum(n for granted, n in self._in_flight.items() if granted < second) + self._landed[second]

    async def _charge_carries(self) -> None:
        """While sends are in flight: in the guard at the end of each second, when this worker grants
        nothing, charge the sends still going to the next second before any worker can take its tokens.
        A second that began before this ran (a starved event loop) is charged as soon as it runs; how
        late it ran widens the guard, so the charge lands in time from then on."""
        try:
            while self._in_flight:
                now = self._clock()
                upcoming = math.floor(now) + 1
                charge_at = upcoming - self._guard()
                if now < charge_at:
                    await asyncio.sleep(charge_at - now)
                current = math.floor(self._clock())
                if self._carried < current:
                    await self._charge(current, self._carry(current))
                if current < upcoming:
                    await self._charge(upcoming, sum(self._in_flight.values()))
                self._lags.append(max(0.0, self._clock() - charge_at))
                await asyncio.sleep(max(0.0, upcoming - self._clock()) + _EPSILON)
        except (KvError, RateLimitError) as exc:
            log.warning("rate limiter: could not charge sends in flight: %s", exc or type(exc).__name__)

    async def _charge(self, second: int, count: int) -> None:
        async with self._lock:
            await self._charge_locked(second, count)

    async def _charge_locked(self, second: int, count: int) -> None:
        if self._carried >= second:
            return
        self._carried = second
        if count <= 0:
            return
        window = next((w for w in plan(self.config, now=second, rate=self._rate(), domain=None)
                       if w.name == "second"), None)
        if window is not None:
            await self._take(window, "transactional", count)

    def _guard(self) -> float:
        """The configured guard, widened to twice the recent lateness of the carry charge (at most 0.5 s)."""
        return min(0.5, max(self.config.guard, 2 * max(self._lags, default=0.0)))

    async def try_acquire(self, *, category: Category, domain: str = "") -> float:
        """Take one token and return 0, or take nothing and return the seconds until one may be free."""
        _check_category(category)
        self._demand += 1
        try:
            return await self._attempt(category, domain)
        finally:
            self._demand -= 1

    async def _attempt(self, category: Category, domain: str) -> float:
        target = normalize_domain(domain) if domain else None
        now = self._clock()
        windows = plan(self.config, now=now, rate=self._rate(), domain=target)
        wait = self._local(windows, category, now)
        if wait is not None:
            return wait
        async with self._lock:
            # the state may have changed while this task waited for the lock
            now = self._clock()
            await self._refresh(now)
            windows = plan(self.config, now=now, rate=self._rate(), domain=target)
            wait = self._local(windows, category, now)
            if wait is not None:
                return wait
            wait = await self._reserve(windows, category, now)
            if wait > 0:
                return wait
            now = self._clock()
            wait = self._local(windows, category, now)
            # the reservation outlasted the window's usable part: start again in the next one
            return wait if wait is not None else _until(windows[0].end, now)

    def _local(self, windows: list[Window], category: Category, now: float) -> float | None:
        """0 when a token was taken from what this worker holds, a wait when a window is known to be
        closed for now, None when the shared counters must be asked."""
        guard = self._guard()
        for window in windows:
            if window.end - guard <= now < window.end:
                return _until(window.end, now)
        holdings = [self._holdings.get(window.key) for window in windows]
        if all(h is not None and h.usable(category) > 0 for h in holdings):
            for holding in holdings:
                assert holding is not None
                holding.take(category)
            self._count_handed(now)
            return 0.0
        for window in windows:
            end = self._exhausted.get((window.key, category))
            if end is not None and now < end:
                return _until(end, now)
        return None

    def _count_handed(self, now: float) -> None:
        self._roll(now)
        self._handed += 1

    def _roll(self, now: float) -> None:
        """Keep how many tokens this worker handed out in the previous second: its current pace."""
        second = math.floor(now)
        if second != self._second:
            self._handed_before = self._handed if second == self._second + 1 else 0
            self._second, self._handed = second, 0

    async def _reserve(self, windows: list[Window], category: Category, now: float) -> float:
        """Top up every window this worker holds no usable token of, with one CAS each; 0 when every
        window now has one, else the wait until the window that had none rolls over."""
        self._roll(now)
        batch = self._batch_size(windows, category)
        for window in windows:
            if window.name == "second" and self._carried < window.start:
                await self._charge_locked(window.start, self._carry(window.start))
            holding = self._holdings.get(window.key)
            if holding is not None and holding.usable(category) > 0:
                continue
            granted = await self._take(window, category, batch)
            if granted == 0:
                for closed in ((category,) if category == "marketing" else CATEGORIES):
                    self._exhausted[(window.key, closed)] = window.end
                return _until(window.end, now)
            if holding is None:
                holding = self._holdings[window.key] = _Holding(window)
            if category == "marketing":
                holding.marketing += granted
            else:
                holding.transactional += granted
            # a later window need not give more than an earlier one did
            batch = min(batch, granted)
        return 0.0

    def _batch_size(self, windows: list[Window], category: Category) -> int:
        """Enough for this worker's demand (waiting sends, last second's pace), never more than half
        of its fair share of any window, so a batch is used up well before its window ends."""
        fair = _MAX_BATCH
        for window in windows:
            cap = window.cap(category)
            if cap is not None:
                fair = min(fair, math.ceil(cap / (2 * self._workers)))
        demand = max(self._demand, self._handed_before)
        return max(1, min(fair, demand))

    async def _take(self, window: Window, category: Category, wanted: int) -> int:
        """Add up to ``wanted`` to the window's counter (one CAS when nobody else wrote in between)."""
        seen = self._seen.get(window.key)
        counter, fresh = (seen[1], False) if seen is not None else (_Counter(0, 0, 0), False)
        for _ in range(_MAX_CAS_ATTEMPTS):
            available = window.available(category, counter.total, counter.marketing)
            granted = wanted if available is None else min(wanted, available)
            if granted <= 0:
                if fresh:
                    self._seen[window.key] = (window.end, counter)
                    return 0
                counter, fresh = await self._read(window.key), True
                continue
            new = _Counter(0, counter.total + granted, counter.marketing + (granted if category == "marketing" else 0))
            try:
                revision = await self._write(window.key, f"{new.total} {new.marketing}".encode(),
                                             last=counter.revision, ttl=window.ttl)
            except RevisionMismatch:
                counter, fresh = await self._read(window.key), True
                continue
            self._seen[window.key] = (window.end, _Counter(revision, new.total, new.marketing))
            return granted
        raise RateLimitError(f"could not update {window.key}: {_MAX_CAS_ATTEMPTS} write conflicts in a row")

    # ---- shared state
    def _rate(self) -> float | None:
        configured = self.config.limits.per_second
        if configured is None or self._aimd is None:
            return None
        ceiling = configured * self._slowdown
        return min(ceiling, max(self._aimd.rate, min(self.config.throttle_floor, ceiling)))

    async def _refresh(self, now: float) -> None:
        """Once per second: re-read the effective rate, forget finished windows; now and then: heartbeat."""
        second = math.floor(now)
        if self.config.limits.per_second is not None and self._aimd_second != second:
            self._aimd = (await self._read_aimd())[1]
            self._slowdown = await self.read_slowdown()
            self._aimd_second = second
        if second != self._pruned_second:
            self._pruned_second = second
            self._holdings = {k: h for k, h in self._holdings.items() if h.window.end > now}
            self._exhausted = {k: end for k, end in self._exhausted.items() if end > now}
            self._landed = Counter({s: n for s, n in self._landed.items() if s >= second})
            self._seen = {k: seen for k, seen in self._seen.items() if seen[0] > now}
        if now - self._beat_at >= _HEARTBEAT_S:
            await self._heartbeat(now, present=True)

    async def _heartbeat(self, now: float, *, present: bool) -> None:
        def change(workers: dict[str, float]) -> dict[str, float]:
            alive = {wid: seen for wid, seen in workers.items() if now - seen < _WORKER_EXPIRY_S}
            if present:
                alive[self.worker_id] = now
            else:
                alive.pop(self.worker_id, None)
            return alive

        workers = await self._change_json(f"{self.config.provider}.workers", change, ttl=_WORKERS_TTL_S)
        self._workers = max(1, len(workers))
        self._beat_at = now

    async def _read_aimd(self) -> tuple[int, _Aimd]:
        configured = self.config.limits.per_second
        assert configured is not None
        revision, data = await self._read_json(f"{self.config.provider}.aimd")
        if not data:
            return revision, _Aimd(rate=configured)
        return revision, _Aimd(rate=float(data["rate"]), changed=float(data.get("changed", 0.0)),
                               throttled_at=data.get("throttled_at"), throttles=int(data.get("throttles", 0)))

    async def _change_aimd(self, change: Callable[[_Aimd], _Aimd | None]) -> _Aimd:
        key = f"{self.config.provider}.aimd"
        for _ in range(_MAX_CAS_ATTEMPTS):
            revision, state = await self._read_aimd()
            new = change(state)
            if new is None:
                self._aimd = state
                return state
            try:
                await self._write(key, json.dumps(asdict(new)).encode(), last=revision, ttl=_AIMD_TTL_S)
            except RevisionMismatch:
                continue
            self._aimd = new
            return new
        raise RateLimitError(f"could not update {key}: {_MAX_CAS_ATTEMPTS} write conflicts in a row")

    async def read_slowdown(self) -> float:
        """The share of the provider limit the reputation monitor allows now (1.0: no slow-down)."""
        _, data = await self._read_json(f"{self.config.provider}.slowdown")
        try:
            factor = float(data.get("factor", 1.0))
        except (TypeError, ValueError):
            return 1.0
        return factor if 0 < factor <= 1 else 1.0

    async def set_slowdown(self, factor: float | None, *, reason: str = "") -> None:
        """Cap every worker's per-second rate at ``factor`` of its own provider limit until lifted
        (``None``). Not a throttle: successful sends do not raise it again."""
        bucket = await self._bucket()
        key = f"{self.config.provider}.slowdown"
        if factor is None:
            await bucket.put(key, b"{}")
            self._slowdown = 1.0
            return
        if not 0 < factor <= 1:
            raise ValueError(f"slow-down factor must be in (0, 1], got {factor}")
        # no TTL: it holds for as long as the reason does, however long that is
        await bucket.put(key, json.dumps({"factor": factor, "reason": reason, "since": self._clock()}).encode())
        self._slowdown = factor

    # ---- adaptive rate
    async def report_throttle(self) -> None:
        """The provider asked us to slow down: every worker's per-second rate is multiplied by
        ``throttle_factor`` (not below ``throttle_floor``), once per ``throttle_cooldown``."""
        configured = self.config.limits.per_second
        if configured is None:
            return
        config = self.config
        now = self._clock()

        def change(state: _Aimd) -> _Aimd | None:
            if state.throttled_at is not None and 0 <= now - state.throttled_at < config.throttle_cooldown:
                return None  # the same episode, already reported by this or another worker
            floor = min(config.throttle_floor, configured)
            rate = max(floor, min(state.rate, configured) * config.throttle_factor)
            return _Aimd(rate=rate, changed=now, throttled_at=now, throttles=state.throttles + 1)

        new = await self._change_aimd(change)
        if new.throttled_at == now:
            log.warning("%s throttled: sending at %.2f/s of %.2f/s", config.provider, new.rate, configured)

    async def report_success(self) -> None:
        """A send went through: after ``recovery_interval`` seconds without a throttle or a step, the rate
        rises by ``recovery_step`` of the configured rate, up to it. Cheap when nothing is due."""
        configured = self.config.limits.per_second
        state = self._aimd
        if configured is None or state is None or state.rate >= configured:
            return
        now = self._clock()
        if now - state.changed < self.config.recovery_interval:
            return
        config = self.config

        def change(fresh: _Aimd) -> _Aimd | None:
            if fresh.rate >= configured or now - fresh.changed < config.recovery_interval:
                return None
            rate = min(configured, fresh.rate + config.recovery_step * configured)
            return _Aimd(rate=rate, changed=now, throttled_at=fresh.throttled_at, throttles=fresh.throttles)

        await self._change_aimd(change)

    # ---- inspection and shutdown
    async def status(self, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Limits, what each current window has used, the throttling and warm-up state; ``extra`` (for
        example pause flags) is merged in as given."""
        config = self.config
        now = self._clock()
        configured = config.limits.per_second
        throttling: dict[str, Any] | None = None
        if configured is not None:
            _, self._aimd = await self._read_aimd()
            self._slowdown = await self.read_slowdown()
            self._aimd_second = math.floor(now)
            state = self._aimd
            throttling = {
                "configured_per_second": configured,
                "effective_per_second": self._rate(),
                "reputation_share": self._slowdown,
                "throttled": state.rate < configured,
                "last_throttle_at": _iso(state.throttled_at),
                "throttles": state.throttles,
            }
        _, workers = await self._read_json(f"{config.provider}.workers")
        used: dict[str, dict[str, Any]] = {}
        for window in plan(config, now=now, rate=self._rate(), domain=None):
            used[window.name] = await self._usage(window)
        domains: dict[str, dict[str, Any]] = {}
        for domain in config.domains:
            for window in plan(config, now=now, rate=None, domain=domain):
                if window.name.startswith("domain"):
                    domains[domain] = await self._usage(window)
        warmup = config.warmup(now)
        day = used.get("day")
        out: dict[str, Any] = {
            "provider": config.provider,
            "worker_id": self.worker_id,
            "active_workers": sum(1 for seen in workers.values() if now - seen < _WORKER_EXPIRY_S),
            "limits": {
                "per_second": configured, "per_minute": config.limits.per_minute,
                "per_hour": config.limits.per_hour, "per_day": config.limits.per_day,
                "domains_per_minute": dict(config.domains), "transactional_share": config.transactional_share,
            },
            "throttling": throttling,
            "guard_s": round(self._guard(), 3),
            "windows": used,
            "domains": domains,
            "warmup": None if config.warmup_start is None else {
                "start": config.warmup_start.isoformat(),
                "day": warmup[0] if warmup else None,
                "cap": warmup[1] if warmup else None,
                "used": day["used"] if warmup and day else None,
                "finished": warmup is None,
            },
        }
        if extra:
            out.update(extra)
        return out

    async def _usage(self, window: Window) -> dict[str, Any]:
        counter = await self._read(window.key)
        return {"start": _iso(window.start), "limit": window.limit, "marketing_limit": window.marketing_limit,
                "used": counter.total, "marketing_used": counter.marketing}

    async def close(self) -> None:
        """Give back the unused tokens of windows that still have more than a second to run, and leave the
        worker count. Tokens of a dead worker are simply lost for the rest of their window."""
        if self._charger is not None:
            self._charger.cancel()
            self._charger = None
        async with self._lock:
            now = self._clock()
            holdings, self._holdings = self._holdings, {}
            for holding in holdings.values():
                spare = holding.marketing + holding.transactional
                if spare and holding.window.end - now > 1:
                    await self._give_back(holding)
            if self._beat_at > -math.inf:
                await self._heartbeat(now, present=False)

    async def _give_back(self, holding: _Holding) -> None:
        key = holding.window.key
        for _ in range(_MAX_CAS_ATTEMPTS):
            counter = await self._read(key)
            total = max(0, counter.total - holding.marketing - holding.transactional)
            marketing = max(0, counter.marketing - holding.marketing)
            try:
                await self._write(key, f"{total} {marketing}".encode(), last=counter.revision, ttl=holding.window.ttl)
                return
            except RevisionMismatch:
                continue

    # ---- KV primitives
    async def _bucket(self) -> Bucket:
        if self._store is None:
            self._store = await self._kv.bucket(self._spec)
        return self._store

    async def _read(self, key: str) -> _Counter:
        entry = await (self._store or await self._bucket()).get(key)
        if entry is None:
            return _Counter(0, 0, 0)
        total, marketing = (entry.value or b"0 0").split()
        return _Counter(entry.revision, int(total), int(marketing))

    async def _read_json(self, key: str) -> tuple[int, dict[str, Any]]:
        entry = await (await self._bucket()).get(key)
        if entry is None:
            return 0, {}
        return entry.revision, json.loads(entry.value) if entry.value else {}

    async def _change_json(self, key: str, change: Callable[[dict[str, Any]], dict[str, Any]], *,
                           ttl: int) -> dict[str, Any]:
        for _ in range(_MAX_CAS_ATTEMPTS):
            revision, data = await self._read_json(key)
            new = change(data)
            try:
                await self._write(key, json.dumps(new).encode(), last=revision, ttl=ttl)
            except RevisionMismatch:
                continue
            return new
        raise RateLimitError(f"could not update {key}: {_MAX_CAS_ATTEMPTS} write conflicts in a row")

    async def _write(self, key: str, value: bytes, *, last: int, ttl: int) -> int:
        """Compare-and-set with a TTL on the new value (a value written without one would keep a finished
        window's key forever); raises RevisionMismatch."""
        return await (self._store or await self._bucket()).update(key, value, revision=last, ttl=ttl)


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")


def _until(end: float, now: float) -> float:
    return max(0.0, end - now) + _EPSILON


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

