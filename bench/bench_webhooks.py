"""Does sending slow down when every ``message.sent`` becomes a webhook?

Starts a local stack of its own, two email workers and one ``webhooks`` worker, and a receiver that answers
each delivery after 200 ms. Sends a campaign of N recipients (default 20,000) without any endpoint, then
another to a second list of N with an endpoint for ``message.sent``, and prints both rates (from "send"
until the campaign's counters show every recipient done), their ratio, and how fast the webhooks were
delivered (until the receiver has one per recipient). A small campaign runs first, unmeasured, so
first-use costs land in neither figure. Beside the rates it prints the CPU time the stack's processes
(workers, the DynamoDB emulator, nats-server) spent per 1,000 emails in each campaign: a figure that other
work on the machine disturbs far less than a rate.

Not a test: nothing here passes or fails. ``python bench/bench_webhooks.py --help`` for sizes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from run import cpu_seconds, emulator_time, fetch_json, import_list, run_campaign, settings_for

FULL_GC = "gc generation 2"  # how the emulator's /_jetmail/timings names its full collections


def collections(held: dict[str, float] | None) -> str:
    if not held:
        return "none"
    return f"{held['count']:.0f} of {held['total_ms']:,.0f} ms in all (the longest so far {held['max_ms']:,.0f} ms)"


class SlowReceiver:
    """Answers every POST with 204 after ``delay`` seconds, counting them (``count``).

    It stands in for the customers' servers, which run elsewhere: a process of its own on asyncio streams,
    so it takes as little of the two cores as it can (a thread per connection and ``http.server``'s header
    parsing took about as much CPU per webhook as jetmail's whole delivery), and its CPU is reported apart.
    """

    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-receiver", str(delay)],
                                     stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}/hook"
        self.pid = self.proc.pid

    @property
    def count(self) -> int:
        with urllib.request.urlopen(self.url.replace("/hook", "/count"), timeout=10) as resp:  # noqa: S310 - ours
            return int(resp.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def serve_receiver(delay: float) -> None:
    """The receiver process: HTTP/1.1 with keep-alive, one request at a time per connection."""
    import asyncio

    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /count "):
                    body = str(count).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                await asyncio.sleep(delay)
                count += 1
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--receiver-ms", type=float, default=200.0)
    parser.add_argument("--cache-s", type=float, default=10.0,
                        help="JETMAIL_WEBHOOK_CACHE_S of every process (production's default: 10 s); the bench "
                             "waits that long after creating the endpoint")
    parser.add_argument("--serve-receiver", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--webhook-concurrency", type=int, default=20,
                        help="jobs the webhooks worker runs at once (each POSTs up to 100 events, 16 at a time)")
    parser.add_argument("--webhook-nice", type=int, metavar="N",
                        help="the webhooks worker's --nice (default 0; the email workers run their campaign "
                             "jobs at 10)")
    args = parser.parse_args()
    if args.serve_receiver is not None:
        serve_receiver(args.serve_receiver)
        return

    from jetmail.bootstrap import bootstrap
    from jetmail.config import Settings
    from jetmail.devstack.stack import LocalStack, free_port, http_ready, stop_process, wait_until
    from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
    from jetmail.services import Services
    from jetmail.webhooks.endpoints import EndpointCreate

    root = Path(tempfile.mkdtemp(prefix="jetmail-bench-webhooks-"))
    stack = LocalStack(root, preferred_ports=False)
    state = stack.up(["nats", "moto", "smtp"])
    workers: list[subprocess.Popen[bytes]] = []
    services: Services | None = None
    receiver: SlowReceiver | None = None
    try:
        env = settings_for(state, {"JETMAIL_WEBHOOK_CACHE_S": str(args.cache_s),
                                   "JETMAIL_WEBHOOK_ALLOW_PRIVATE": "true"})
        os.environ.update({k: v for k, v in env.items() if k.startswith(("JETMAIL_", "AWS_"))})
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        list(bootstrap(settings, create_table=True))
        services = Services(settings)
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
            services.templates.save(content)
        receiver = SlowReceiver(args.receiver_ms / 1000)

        warm = min(args.recipients, 1000)
        warm_list, _ = import_list(services, "warm", warm, "w")
        plain_list, _ = import_list(services, "plain", args.recipients, "p")
        hooked_list, _ = import_list(services, "hooked", args.recipients, "h")
        commands = [["email_transactional", "email_campaign", "email_ab_test", "email_maintenance",
                     "--concurrency", "16"]] * 2 + [["webhooks", "--concurrency", str(args.webhook_concurrency),
                                                     *(["--nice", str(args.webhook_nice)]
                                                       if args.webhook_nice is not None else [])]]
        for n, queues in enumerate(commands):
            port = free_port()
            log = (root / f"worker{n}.log").open("wb")
            workers.append(subprocess.Popen([sys.executable, "-m", "jetmail.cli", "worker", *queues,
                                             "--health-port", str(port)], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
            wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="worker")

        groups = {"email workers": [p.pid for p in workers[:2]], "webhooks worker": [workers[2].pid],
                  **{name: [service.pid] for name, service in state.services.items()}}

        def cpu_by_group() -> dict[str, float]:
            return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}

        def cpu() -> float:
            return sum(cpu_by_group().values())

        print(f"warm-up campaign of {warm:,} ...", flush=True)
        run_campaign(services, warm_list, warm)  # first-use costs (caches, connections) out of the figures
        timings = f"{state.services['moto'].url}/_jetmail/timings"
        print(f"campaign of {args.recipients:,}, no webhooks ...", flush=True)
        cpu_at = cpu()
        groups_at = cpu_by_group()
        held_at = fetch_json(timings)
        plain = run_campaign(services, plain_list, args.recipients)
        plain_gc = emulator_time(held_at, fetch_json(timings)).get(FULL_GC)
        plain_cpu = cpu() - cpu_at
        plain_groups = {name: seconds - groups_at[name] for name, seconds in cpu_by_group().items()}
        plain_rate = args.recipients / (plain.end - plain.started)

        services.webhook_service.create(EndpointCreate(url=receiver.url, events=["message.sent"]))
        time.sleep(settings.webhook_cache_s + 1)  # every process's endpoint cache picks the endpoint up
        print(f"campaign of {args.recipients:,}, message.sent webhooks to a {args.receiver_ms:.0f} ms receiver ...",
              flush=True)
        cpu_at = cpu()
        groups_at = cpu_by_group()
        receiver_at = cpu_seconds(receiver.pid)
        held_at = fetch_json(timings)
        hooked = run_campaign(services, hooked_list, args.recipients)
        hooked_gc = emulator_time(held_at, fetch_json(timings)).get(FULL_GC)
        hooked_cpu = cpu() - cpu_at
        hooked_rate = args.recipients / (hooked.end - hooked.started)
        wait_until(lambda: receiver.count >= args.recipients, timeout=7200, what="every webhook delivered")
        delivered_rate = args.recipients / (time.time() - hooked.started)
        delivered_cpu = cpu() - cpu_at
        delivered_groups = {name: seconds - groups_at[name] for name, seconds in cpu_by_group().items()}
        receiver_cpu = cpu_seconds(receiver.pid) - receiver_at
        per_k = 1000 / args.recipients

        print()
        print(f"campaign, {args.recipients} recipients, no webhooks          {plain_rate:,.1f} emails/s")
        print(f"campaign, {args.recipients} recipients, sent webhooks        {hooked_rate:,.1f} emails/s "
              f"({hooked_rate / plain_rate:.0%} of the rate without)")
        print(f"webhooks delivered ({args.receiver_ms:.0f} ms receiver, {args.webhook_concurrency} jobs at once)  "
              f"{delivered_rate:,.1f} /s")
        print(f"stack CPU per 1,000 emails: {plain_cpu * per_k:.1f} s without webhooks, {hooked_cpu * per_k:.1f} s "
              f"with them while the campaign ran, {delivered_cpu * per_k:.1f} s until every webhook was delivered")
        print(f"stack CPU per webhook (until delivered, less the campaign without): "
              f"{(delivered_cpu - plain_cpu) / args.recipients * 1000:.1f} ms")
        print("  by process, per 1,000 emails with webhooks until delivered (without): " + ", ".join(
            f"{name} {seconds * per_k:.2f} s ({plain_groups[name] * per_k:.2f} s)"
            for name, seconds in delivered_groups.items()))
        print(f"the emulator's full garbage collections (every request waits for each): {collections(plain_gc)} "
              f"during the campaign without webhooks, {collections(hooked_gc)} during the one with them")
        print(f"the receiver's own CPU per webhook (not the stack's; it shares the cores): "
              f"{receiver_cpu / args.recipients * 1000:.2f} ms")
    finally:
        for proc in workers:
            stop_process(proc.pid)
        if services is not None:
            services.queue.close()
        if receiver is not None:
            receiver.stop()
        stack.down()


if __name__ == "__main__":
    main()
