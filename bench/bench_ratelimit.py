"""How close the shared rate limiter gets to its limit, counted where the mail arrives.

    .venv/bin/python bench/bench_ratelimit.py [--rate 200] [--workers 4] [--seconds 60]

Starts nats-server and the local SMTP sink (which stamps every message's arrival time), then worker
processes that send as fast as the limiter lets them for ``--seconds`` whole seconds, all starting on
the same second. Prints achieved/configured over the run and the largest and smallest counts in any
1-second window, by arrival at the sink and by send completion at the workers. The largest must
never exceed the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from pydantic import SecretStr

from jetmail.config import Settings
from jetmail.deliverability.ratelimit import RateConfig, RateLimiter, RateLimits
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import LocalStack
from jetmail.messaging.providers import OutboundMessage, SmtpProvider, TemporaryDeliveryError
from jetmail.queue import Queue, QueueConfig


def build(index: int, worker: int) -> OutboundMessage:
    address = f"w{worker}-{index}@example.com"
    msg = EmailMessage()
    msg["From"] = "bench@example.com"
    msg["To"] = address
    msg["Subject"] = f"bench {index}"
    msg["Message-ID"] = make_msgid(domain="bench.jetmail")
    msg.set_content("rate limit bench " * 20)
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return OutboundMessage(mail_from="bench@example.com", recipients=[address], raw=raw,
                           message_id=str(msg["Message-ID"]).strip("<>"))


async def worker(args: argparse.Namespace) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, table_name="bench", signing_secret=SecretStr("bench-signing-secret-0123456789"),
        nats_url=args.nats_url, smtp_host="127.0.0.1", smtp_port=args.smtp_port, smtp_pool_size=4,
    )
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=args.rate), transactional_share=0,
                        bucket=args.bucket)
    provider = SmtpProvider(settings, local_hostname="bench.local")
    sent: list[float] = []
    async with Queue(QueueConfig(nats_url=args.nats_url)) as queue:
        limiter = RateLimiter(queue.js, config, worker_id=f"bench-{args.worker}-{os.getpid()}")
        # built before the start: the bench measures the limiter and the sends, not MIME
        messages = itertools.cycle([build(n, args.worker) for n in range(500)])

        async def sender() -> None:
            while time.time() < end:
                message = next(messages)
                try:
                    async with limiter.sending(category="marketing", domain="example.com"):
                        if time.time() >= end:
                            return
                        await provider.send(message)
                except TemporaryDeliveryError:
                    continue
                sent.append(time.time())

        await limiter.status()  # connected, bucket ready
        print("ready", flush=True)
        start, end = map(float, (await asyncio.to_thread(sys.stdin.readline)).split())
        await asyncio.sleep(max(0.0, start - time.time()))
        await asyncio.gather(*(sender() for _ in range(args.concurrency)))
        await limiter.close()
    await provider.close()
    print(json.dumps(sent))


def spawn_workers(args: argparse.Namespace, *, nats_url: str, smtp_port: int) -> tuple[float, list[float]]:
    """Start the workers, wait until each is connected, then start them all on the same whole second."""
    bucket = f"bench_{int(time.time())}"
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", str(n), "--nats-url", nats_url, "--smtp-port", str(smtp_port),
         "--rate", str(args.rate), "--bucket", bucket, "--concurrency", str(args.concurrency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in range(args.workers)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    start = float(math.ceil(time.time()) + 1)
    end = start + args.seconds
    completed: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(f"{start} {end}\n", timeout=end - time.time() + 60)
        if proc.returncode != 0:
            raise SystemExit(f"worker exited with {proc.returncode}")
        completed.extend(json.loads(out))
    return start, completed


def report(label: str, times: list[float], *, rate: float, start: float, seconds: int) -> None:
    inside = [t for t in times if start <= t < start + seconds]
    per_second = Counter(math.floor(t) for t in inside)
    counts = [per_second.get(s, 0) for s in range(int(start), int(start) + seconds)]
    achieved = len(inside) / (rate * seconds)
    print(f"{label:<34} {len(inside):6d} msgs in {seconds} s   achieved/configured {achieved:.3f}   "
          f"max 1-s window {max(counts)} (limit {rate:g})   min {min(counts)}   "
          f"windows below the limit {sum(c < rate for c in counts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=16, help="sending tasks per worker")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        asyncio.run(worker(args))
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.workers} workers at {args.rate:g}/s "
          f"for {args.seconds} s")
    with tempfile.TemporaryDirectory(prefix="jetmail-bench-") as tmp:
        stack = LocalStack(Path(tmp), preferred_ports=False)
        try:
            state = stack.up(["nats", "smtp"])
            start, completed = spawn_workers(args, nats_url=state.services["nats"].url,
                                             smtp_port=state.services["smtp"].port)
            arrived = [e.received_at for e in Mailbox(state.maildir).entries()]
            report("by arrival at the sink", arrived, rate=args.rate, start=start, seconds=args.seconds)
            report("by send completion at the workers", completed, rate=args.rate, start=start,
                   seconds=args.seconds)
        finally:
            stack.down()


if __name__ == "__main__":
    main()
