"""A local SMTP sink that keeps every message it accepts.

Each accepted message is written to ``<maildir>/<id>.eml`` and one JSON line is appended to
``<maildir>/index.jsonl`` (id, envelope sender and recipients, arrival time), so tests and the CLI
can count deliveries by recipient without parsing every file.

Recipients with these local-part prefixes exercise failure handling (the dev sink's test hooks):

* ``reject-...@``      → ``550`` at RCPT (permanent failure)
* ``defer<N>-...@``    → ``451`` at RCPT for the first N attempts per address, then accepted
* ``busy-...@``        → ``421 too many messages`` at RCPT (provider throttling), every time
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

_DEFER = re.compile(r"^defer(\d+)-", re.IGNORECASE)


class SinkHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.maildir.mkdir(parents=True, exist_ok=True)
        self._index = (maildir / "index.jsonl").open("a", encoding="utf-8", buffering=1)
        self._deferred: dict[str, int] = {}

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
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
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


async def serve(*, host: str, port: int, maildir: Path) -> None:
    handler = SinkHandler(maildir)
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
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host=args.host, port=args.port, maildir=args.dir))


if __name__ == "__main__":
    main()
