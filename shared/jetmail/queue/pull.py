"""Pull requests against one durable consumer.

nats-py's ``fetch`` always follows an empty no-wait probe with a lingering request, so it cannot answer
"what is there right now?" without waiting. Priorities need exactly that question (high first, then normal,
then low), so this sends the JetStream pull request itself: ``no_wait`` for probes, ``expires`` for the short
idle long-poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .subjects import JS_API

log = logging.getLogger("jetmail.queue")

_HEARTBEAT = "100"
_NO_MESSAGES = "404"
_REQUEST_TIMEOUT = "408"
# how long past a request's own expiry to wait for the server's closing status before giving up on the inbox
_MARGIN_S = 2.0


class PullError(RuntimeError):
    """The server answered a pull request with an error status (no consumer, too many waiting pulls...)."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"{status} {description}".strip())
        self.status = status
        self.description = description


class Puller:
    """Serialised pull requests on one consumer, each ended by its batch or the server's closing status.

    Waiting for that closing status (404/408) is what keeps the inbox clean for the next request; if it never
    comes (e.g. a reconnect in between) the inbox is replaced, and anything that lands in the old one is
    redelivered after ack_wait.
    """

    def __init__(self, nc: NATS, *, stream: str, consumer: str) -> None:
        self._nc = nc
        self.stream = stream
        self.consumer = consumer
        self._request_subject = f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._sub: Subscription | None = None
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._lock = asyncio.Lock()

    async def pull(self, batch: int, *, wait: float | None = None) -> list[Msg]:
        """Up to ``batch`` messages: those available now, or with ``wait``, what arrives within ``wait`` s.

        With ``wait`` the call returns as soon as ``batch`` messages arrived, so idle long-polls use batch 1.
        """
        if batch < 1:
            return []
        async with self._lock:
            sub = await self._subscription()
            request: dict[str, object] = {"batch": batch}
            if wait:
                request["expires"] = int(wait * 1_000_000_000)
            else:
                request["no_wait"] = True
            await self._nc.publish(self._request_subject, json.dumps(request).encode(), reply=sub.subject)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (wait or 0.0) + _MARGIN_S
            msgs: list[Msg] = []
            while len(msgs) < batch:
                try:
                    msg = self._inbox.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    try:
                        if remaining <= 0:
                            raise TimeoutError
                        msg = await asyncio.wait_for(self._inbox.get(), timeout=remaining)
                    except TimeoutError:
                        log.warning("pull on %s: no closing status from the server; replacing the inbox",
                                    self.consumer)
                        await self._reset()
                        return msgs
                status = msg.headers.get("Status") if msg.headers else None
                if not status:
                    msgs.append(msg)
                    continue
                if status == _HEARTBEAT:
                    continue
                if status in (_NO_MESSAGES, _REQUEST_TIMEOUT) or msgs:
                    return msgs
                raise PullError(status, (msg.headers or {}).get("Description", ""))
            return msgs

    async def close(self) -> None:
        async with self._lock:
            await self._reset()

    async def _subscription(self) -> Subscription:
        if self._sub is None:
            inbox = self._inbox

            async def deliver(msg: Msg) -> None:
                inbox.put_nowait(msg)

            self._sub = await self._nc.subscribe(self._nc.new_inbox(), cb=deliver)
        return self._sub

    async def _reset(self) -> None:
        sub, self._sub = self._sub, None
        self._inbox = asyncio.Queue()
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
