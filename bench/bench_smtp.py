"""Messages per second through SmtpProvider, to the local sink and (when installed) Postfix's smtp-sink.

    .venv/bin/python bench/bench_smtp.py [--messages 2000] [--size 4096]

The local sink is Python (aiosmtpd) and writes every message to disk, so it is usually the
bottleneck; Postfix's ``smtp-sink`` discards mail and shows what the client side can do. Each pool
size runs twice: one command per round trip (``lockstep``) and with RFC 2920 PIPELINING. The messages are
campaign mail (the ``marketing`` lane), whose next transaction follows a body before its reply when pipelining.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from postfix_sink import find_smtp_sink, start_smtp_sink
from pydantic import SecretStr

from jetmail.config import Settings
from jetmail.devstack.stack import LocalStack, stop_process
from jetmail.messaging.providers import OutboundMessage, SmtpProvider

POOL_SIZES = (1, 4)


def build(index: int, size: int) -> OutboundMessage:
    msg = EmailMessage()
    msg["From"] = "bench@example.com"
    msg["To"] = f"r{index}@example.com"
    msg["Subject"] = f"bench {index}"
    msg["Message-ID"] = make_msgid(domain="bench.jetmail")
    msg.set_content(("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size])
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return OutboundMessage(mail_from="bench@example.com", recipients=[f"r{index}@example.com"], raw=raw,
                           message_id=f"msg_bench{index}", lane="marketing")


async def run_once(settings: Settings, messages: list[OutboundMessage], *,
                   concurrency: int) -> tuple[float, int]:
    provider = SmtpProvider(settings, local_hostname="bench.local")
    queue: asyncio.Queue[OutboundMessage] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def sender() -> None:
        while not queue.empty():
            await provider.send(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await provider.close()
    return elapsed, provider.connections_opened


def bench(label: str, port: int, *, count: int, size: int) -> None:
    messages = [build(i, size) for i in range(count)]
    for pool in POOL_SIZES:
        for pipelining in (False, True):
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, table_name="bench", signing_secret=SecretStr("bench-signing-secret-0123456789"),
                smtp_host="127.0.0.1", smtp_port=port, smtp_pool_size=pool, smtp_max_messages_per_connection=100,
                smtp_pipelining=pipelining,
            )
            # as many sending tasks as a worker would run: more than the pool, so no slot sits idle
            elapsed, opened = asyncio.run(run_once(settings, messages, concurrency=pool * 4))
            mode = "pipelined" if pipelining else "lockstep "
            print(f"{label:<24} pool={pool} {mode} {count} msgs of {size} B  {count / elapsed:8.0f} msg/s"
                  f"  ({elapsed:.2f} s, {opened} connections)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="body bytes per message")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory(prefix="jetmail-bench-") as tmp:
        stack = LocalStack(Path(tmp), preferred_ports=False)
        try:
            state = stack.up(["smtp"])
            bench("jetmail sink (aiosmtpd)", state.services["smtp"].port, count=args.messages, size=args.size)
        finally:
            stack.down()

    binary = find_smtp_sink()
    if binary is None:
        print("postfix smtp-sink: skipped (not found; apt-get install postfix provides it, bench/run.py installs it)")
        return
    proc, port = start_smtp_sink(binary)
    try:
        bench("postfix smtp-sink", port, count=args.messages, size=args.size)
    finally:
        stop_process(proc.pid)


if __name__ == "__main__":
    main()
