"""A sending worker for the rate-limit tests: ``python tests/deliverability/ratelimit_tasks.py --count N ...``.

Reads its settings from the environment like a real worker, shares the limiter's bucket with its
sibling processes, and sends ``--count`` messages to the SMTP sink, each inside ``limiter.sending()``
(``acquire``, then the send, timed). Prints one JSON line with what it sent when done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from dataclasses import replace
from email.message import EmailMessage
from email.utils import make_msgid

from jetmail.config import get_settings
from jetmail.deliverability.ratelimit import RateConfig, RateLimiter
from jetmail.messaging.providers import OutboundMessage, SmtpProvider, TemporaryDeliveryError
from jetmail.queue import Queue, QueueConfig


def build(address: str) -> OutboundMessage:
    msg = EmailMessage()
    msg["From"] = "limits@example.com"
    msg["To"] = address
    msg["Subject"] = "rate limit test"
    msg["Message-ID"] = make_msgid(domain="ratelimit.jetmail")
    msg.set_content("hello")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return OutboundMessage(mail_from="limits@example.com", recipients=[address], raw=raw,
                           message_id=str(msg["Message-ID"]).strip("<>"))


async def run(args: argparse.Namespace) -> dict[str, int]:
    settings = get_settings()
    config = replace(RateConfig.from_settings(settings), bucket=args.bucket)
    worker_id = f"{socket.gethostname()}-{os.getpid()}"
    provider = SmtpProvider(settings)
    sent = throttled = 0
    next_index = 0
    async with Queue(QueueConfig(nats_url=settings.nats_url)) as queue:
        limiter = RateLimiter(queue.js, config, worker_id=worker_id)

        async def sender() -> None:
            nonlocal next_index, sent, throttled
            while next_index < args.count:
                index = next_index
                next_index += 1
                message = build(f"{args.tag}-{index}@{args.domain}")
                try:
                    async with limiter.sending(category=args.category, domain=args.domain):
                        await provider.send(message)
                except TemporaryDeliveryError as exc:
                    throttled += exc.throttled
                    continue
                sent += 1

        try:
            await asyncio.gather(*(sender() for _ in range(args.concurrency)))
        finally:
            await limiter.close()
            await provider.close()
    return {"pid": os.getpid(), "sent": sent, "throttled": throttled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tag", required=True, help="local part prefix of every recipient")
    parser.add_argument("--domain", default="example.com")
    parser.add_argument("--bucket", required=True, help="the KV bucket shared by the processes of one test")
    parser.add_argument("--category", choices=["transactional", "marketing"], default="transactional")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
