"""A local SMTP sink that keeps every message it accepts.

Each accepted message is written to ``<maildir>/<id>.eml`` and one JSON line is appended to
``<maildir>/index.jsonl`` (id, envelope sender and recipients, arrival time), so tests and the CLI
can count deliveries by recipient without parsing every file. It offers PIPELINING (RFC 2920), as
Postfix does: aiosmtpd reads commands in order from a buffered stream, so a client may send MAIL,
RCPT and DATA in one write.

Recipients with these local-part prefixes exercise failure handling (the dev sink's test hooks):

* ``reject-...@``      → ``550`` at RCPT (permanent failure)
* ``defer<N>-...@``    → ``451`` at RCPT for the first N attempts per address, then accepted
* ``busy-...@``        → ``421 too many messages`` at RCPT (provider throttling), every time

Fault injection for the reliability suite (``--faults`` or ``JETMAIL_SINK_FAULTS``), e.g.
``421=0.05,451=0.05,550=0.02,drop=0.02,stall=0.01``: the share of delivery attempts answered with a
421 or 451 (temporary), a 550 (permanent), a connection dropped after the message was transferred
(no reply), or no reply until ``--stall-seconds`` have passed, then a dropped connection (past the
client's timeout). None of these attempts stores the message. Which attempt gets which fault is a
hash of (``--seed``, address, attempt number at that address), so a run is reproducible whatever
order the messages arrive in. Every injected fault is appended to ``<maildir>/faults.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

_DEFER = re.compile(r"^defer(\d+)-", re.IGNORECASE)
FAULT_KINDS = ("421", "451", "550", "drop", "stall")
_REPLIES = {"421": "421 4.7.0 too many messages, slow down", "451": "451 4.3.0 try again later",
            "550": "550 5.1.1 mailbox unavailable"}


def parse_faults(spec: str) -> dict[str, float]:
    """``"421=0.05,550=0.02"`` → ``{"421": 0.05, "550": 0.02}``; shares must add up to at most 1."""
    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, sep, value = part.partition("=")
        if not sep or kind.strip() not in FAULT_KINDS:
            raise ValueError(f"bad fault {part!r}: expected KIND=SHARE with KIND one of {', '.join(FAULT_KINDS)}")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"bad fault {part!r}: {value!r} is not a number") from None
        if not 0 <= share <= 1:
            raise ValueError(f"bad fault {part!r}: a share is between 0 and 1")
        shares[kind.strip()] = share
    if sum(shares.values()) > 1:
        raise ValueError(f"fault shares add up to {sum(shares.values()):.2f}, more than 1")
    return shares


class FaultPlan:
    """Which delivery attempt fails how: deterministic in (seed, address, attempt)."""

    def __init__(self, shares: dict[str, float], *, seed: int = 0) -> None:
        self.shares = shares
        self.seed = seed

    def pick(self, address: str, attempt: int) -> str | None:
        digest = hashlib.sha256(f"{self.seed}|{address}|{attempt}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        for kind in FAULT_KINDS:
            point -= self.shares.get(kind, 0.0)
            if point < 0:
                return kind
        return None


class SinkHandler:
    def __init__(self, maildir: Path, *, faults: FaultPlan | None = None, stall_seconds: float = 30.0,
                 pipelining: bool = True) -> None:
        self.maildir = maildir
        self.pipelining = pipelining
        self.maildir.mkdir(parents=True, exist_ok=True)
        self._index = (maildir / "index.jsonl").open("a", encoding="utf-8", buffering=1)
        self._deferred: dict[str, int] = {}
        self.faults = faults
        self.stall_seconds = stall_seconds
        self._attempts: dict[str, int] = {}
        # a fault picked at RCPT, acted on once the data is in
        self._envelope_faults: weakref.WeakKeyDictionary[Envelope, str] = weakref.WeakKeyDictionary()
        self._fault_log = (maildir / "faults.jsonl").open("a", encoding="utf-8", buffering=1) if faults else None

    def _injected(self, address: str) -> str | None:
        if self.faults is None or self._fault_log is None:
            return None
        key = address.lower()
        attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        kind = self.faults.pick(key, attempt)
        if kind is not None:
            self._fault_log.write(json.dumps({"rcpt": key, "fault": kind, "attempt": attempt,
                                              "at": time.time()}) + "\n")
        return kind

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if not self.pipelining:
            return responses
        # the last line of a multi-line reply has a space after the code: insert before it
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if len(responses) > 1 else responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject-"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("busy-"):
            return "421 4.7.0 too many messages, slow down"
        match = _DEFER.match(local)
        if match:
            seen = self._deferred.get(address.lower(), 0)
            if seen < int(match.group(1)):
                self._deferred[address.lower()] = seen + 1
                return "451 4.3.0 try again later"
        fault = self._injected(address)
        if fault in _REPLIES:
            return _REPLIES[fault]
        if fault is not None:
            self._envelope_faults[envelope] = fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._envelope_faults.get(envelope)
        if fault is not None:
            if fault == "stall":
                await asyncio.sleep(self.stall_seconds)
            # no reply at all: the client cannot know whether the message was taken, and it was not
            if isinstance(server.transport, asyncio.WriteTransport):
                server.transport.abort()
            return "451 4.3.0 connection lost"
        message_id = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        content = envelope.original_content or b""
        (self.maildir / f"{message_id}.eml").write_bytes(content)
        record: dict[str, Any] = {
            "id": message_id,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "received_at": time.time(),
            "size": len(content),
        }
        self._index.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"

    def close(self) -> None:
        self._index.close()
        if self._fault_log is not None:
            self._fault_log.close()


async def serve(*, host: str, port: int, maildir: Path, faults: FaultPlan | None = None,
                stall_seconds: float = 30.0) -> None:
    handler = SinkHandler(maildir, faults=faults, stall_seconds=stall_seconds)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="jetmail-sink", enable_SMTPUTF8=True, data_size_limit=25 * 1024 * 1024),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    handler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="jetmail local SMTP sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--faults", default=os.environ.get("JETMAIL_SINK_FAULTS", ""),
                        help="shares of failed attempts, e.g. 421=0.05,451=0.05,550=0.02,drop=0.02,stall=0.01")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("JETMAIL_SINK_SEED", "0")))
    parser.add_argument("--stall-seconds", type=float,
                        default=float(os.environ.get("JETMAIL_SINK_STALL_SECONDS", "30")))
    args = parser.parse_args()
    try:
        shares = parse_faults(args.faults)
    except ValueError as exc:
        parser.error(str(exc))
    faults = FaultPlan(shares, seed=args.seed) if shares else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host=args.host, port=args.port, maildir=args.dir, faults=faults,
                          stall_seconds=args.stall_seconds))


if __name__ == "__main__":
    main()
