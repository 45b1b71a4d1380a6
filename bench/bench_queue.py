"""Job-layer figures on a private nats-server: enqueue/s (one at a time and in bulk), jobs run/s by one
worker for a no-op task, and the pick-up latency of an idle worker per priority.

    .venv/bin/python bench/bench_queue.py [--jobs 20000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

from jetmail.devstack.stack import LocalStack
from jetmail.queue import JobContext, Queue, QueueConfig, Registry, Worker

QUEUE = "bench"


async def measure(nats_url: str, *, jobs: int, single: int, concurrency: int, samples: int) -> None:
    registry = Registry()
    picked_up: asyncio.Queue[float] = asyncio.Queue()

    @registry.task("noop")
    async def noop(job: dict[str, Any], ctx: JobContext) -> None:
        return None

    @registry.task("stamp")
    async def stamp(job: dict[str, Any], ctx: JobContext) -> None:
        picked_up.put_nowait(time.perf_counter())

    config = QueueConfig(nats_url=nats_url)
    async with Queue(config, registry=registry) as q:
        await q.ensure_streams([QUEUE])

        started = time.perf_counter()
        for _ in range(single):
            await q.enqueue("noop", queue=QUEUE)
        one_by_one = single / (time.perf_counter() - started)
        print(f"enqueue (one at a time):   {one_by_one:>9,.0f} jobs/s  ({single:,} jobs)")

        started = time.perf_counter()
        for offset in range(0, jobs, 5000):
            await q.enqueue_many("noop", [{}] * min(5000, jobs - offset), queue=QUEUE)
        bulk = jobs / (time.perf_counter() - started)
        print(f"enqueue_many (bulk):       {bulk:>9,.0f} jobs/s  ({jobs:,} jobs)")

        total = single + jobs
        worker = Worker(config, [QUEUE], registry=registry, concurrency=concurrency, burst=True,
                        handle_signals=False)
        started = time.perf_counter()
        await worker.run()
        elapsed = time.perf_counter() - started
        print(f"worker, no-op task:        {total / elapsed:>9,.0f} jobs/s  ({total:,} jobs, "
              f"concurrency {concurrency}, one process)")

        worker = Worker(config, [QUEUE], registry=registry, concurrency=concurrency, handle_signals=False)
        running = asyncio.create_task(worker.run())
        while not worker.healthy:  # noqa: ASYNC110 - the worker exposes no start event; a bench may poll
            await asyncio.sleep(0.01)
        for priority in ("high", "normal", "low"):
            delays = []
            for _ in range(samples):
                await asyncio.sleep(0.13)  # land at a random point of the worker's idle poll
                sent = time.perf_counter()
                await q.enqueue("stamp", queue=QUEUE, priority=priority)
                delays.append((await picked_up.get() - sent) * 1000)
            print(f"idle pick-up, {priority:<6}:      median {statistics.median(delays):6.1f} ms, "
                  f"max {max(delays):6.1f} ms  ({samples} jobs)")
        worker.stop()
        await running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs enqueued in bulk")
    parser.add_argument("--single", type=int, default=5_000, help="jobs enqueued one at a time")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--samples", type=int, default=20, help="latency samples per priority")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(tmp, preferred_ports=False)
        state = stack.up(["nats"])
        try:
            asyncio.run(measure(state.services["nats"].url, jobs=args.jobs, single=args.single,
                                concurrency=args.concurrency, samples=args.samples))
        finally:
            stack.down()


if __name__ == "__main__":
    main()
