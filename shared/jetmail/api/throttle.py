"""Per-API-key request limit, shared by every API container: the send-rate limiter, one provider per key.

Each key gets a ``RateLimiter`` over the ``api-<key id>`` counters in the rate-limit KV bucket with one
window, the wall-clock minute. The counters live in NATS, which every container already holds a
connection to for enqueuing; a DynamoDB conditional counter would add a billed write to every request.
A container takes tokens in small batches sized by its own pace, so the total never exceeds the limit;
tokens a container holds but does not use before the minute ends are lost, so with many warm
containers a key may see 429 slightly before it made its full count of requests.

The limiter store failing must not take the API down: a request whose limit cannot be checked is let
through with a warning, and the limiter is not asked again for ``retry_s`` seconds so that a dead NATS
does not add a connect timeout to every request.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jetmail.compliance.apikeys import ApiKey
    from jetmail.deliverability.ratelimit import RateLimiter
    from jetmail.queue import Queue, SyncClient

log = logging.getLogger("jetmail.api")


class ApiThrottle:
    def __init__(self, queue: Callable[[], SyncClient], *, per_minute: int, replicas: int = 1,
                 retry_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self.per_minute = per_minute
        self.replicas = replicas
        self.retry_s = retry_s
        self._clock = clock
        # one id per throttle: two apps in one process count as two containers
        self._worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._limiters: dict[tuple[str, int], tuple[object, RateLimiter]] = {}
        self._lock = threading.Lock()
        self._skip_until = 0.0

    def limit_for(self, key: ApiKey) -> int:
        """Requests per minute for ``key``; 0 means no limit."""
        return key.rate_per_minute if key.rate_per_minute is not None else self.per_minute

    def check(self, key: ApiKey) -> int:
        """Take one request from the key's minute: 0 when allowed, else the seconds until it may retry."""
        return self.take(key.key_id, self.limit_for(key))

    def take(self, name: str, limit: int) -> int:
        """Take one request from the minute of the counter ``name`` (an API key's id; the public subscribe
        form counts per client address and per email address): 0 when allowed, else seconds to wait."""
        if limit <= 0 or self._clock() < self._skip_until:
            return 0
        try:
            wait = self._queue().run(lambda queue: self._attempt(queue, name, limit))
        except Exception as exc:  # any failure of the store: fail open, loudly
            self._skip_until = self._clock() + self.retry_s
            log.warning("API rate limit not enforced for %.0fs: the limiter store failed: %s",
                        self.retry_s, str(exc) or type(exc).__name__)
            return 0
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    async def _attempt(self, queue: Queue, key_id: str, limit: int) -> float:
        return await self._limiter(queue, key_id, limit).try_acquire(category="transactional")

    def _limiter(self, queue: Queue, key_id: str, limit: int) -> RateLimiter:
        # loaded with the first limited request, which connects to NATS anyway: a cold start answering
        # /health or a request of an unlimited key never loads the limiter
        from jetmail.deliverability.ratelimit import RateConfig, RateLimiter, RateLimits

        js = queue.js
        with self._lock:
            known = self._limiters.get((key_id, limit))
            # a reconnect gives the queue a new JetStream context; a limiter on the old one would fail
            if known is None or known[0] is not js:
                config = RateConfig(provider=f"api-{key_id}", limits=RateLimits(per_minute=limit),
                                    transactional_share=0.0, guard=0.0, replicas=self.replicas)
                known = (js, RateLimiter(js, config, worker_id=self._worker_id, clock=self._clock))
                self._limiters[(key_id, limit)] = known
            return known[1]
