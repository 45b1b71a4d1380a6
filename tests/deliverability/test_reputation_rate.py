"""The reputation slow-down, measured as the rate a worker's limiter actually grants."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from jetmail.deliverability.ratelimit import RateConfig, RateLimiter, RateLimits
from jetmail.deliverability.reputation import count_sent
from jetmail.devstack.stack import StackState
from jetmail.queue import Queue, QueueConfig
from jetmail.scheduler import tick
from stacktools import Isolated

SETTINGS_DEFAULT = 14  # what the settings say; a worker on AWS uses its SES quota instead
QUOTA = 200


class Clock:
    """Wall-clock time that moves only when told: an hour of recovery takes no real time."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # the slow-down is account-wide: an account of its own
    own = Isolated(stack, tmp_path_factory.mktemp("reputation-rate"), rate_per_second=SETTINGS_DEFAULT)
    yield own
    own.close()


def add_events(own: Isolated, **counts: int) -> None:
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H")
    names = {f"#c{i}": name for i, name in enumerate(counts)}
    own.services.stats_table.update("STATS", f"HOUR#{hour}",
                                    expression="ADD " + ", ".join(f"#c{i} :v{i}" for i in range(len(counts))),
                                    names=names, params={f":v{i}": v for i, v in enumerate(counts.values())})


def test_a_high_bounce_rate_halves_the_real_rate_until_it_is_healthy(isolated: Isolated) -> None:
    services = isolated.services
    clock = Clock(math.floor(datetime(2031, 5, 6, 7, 0, tzinfo=UTC).timestamp()) + 0.1)
    # a worker whose provider limit is the account's quota (200/s), not the settings default (14/s),
    # recovering quickly from throttles: 50 % of the limit every 10 s
    config = RateConfig(provider=services.settings.provider, limits=RateLimits(per_second=QUOTA),
                        transactional_share=0, recovery_step=0.5, recovery_interval=10)

    async def scenario(queue: Queue) -> dict[str, list[int]]:
        worker = RateLimiter(queue.js, config, worker_id="worker-1", clock=clock)

        async def one_second() -> int:
            """Tokens the worker gets in one fresh second: the rate it may send at."""
            clock.now = math.floor(clock.now) + 1.1
            for taken in range(QUOTA * 2):
                if await worker.try_acquire(category="marketing") > 0:
                    return taken
            return QUOTA * 2

        async def tick_now() -> list[str]:
            return list((await asyncio.to_thread(tick, services))["reputation_actions"])

        rates: dict[str, list[int]] = {"before": [await one_second()]}
        # GIVEN 1,000 sends with 6 % hard bounces
        await count_sent(queue.js, 1000)
        await asyncio.to_thread(add_events, isolated, bounced_hard=60)
        rates["actions"] = await tick_now()  # type: ignore[assignment]
        # THEN the worker sends at half of its own limit
        rates["halved"] = [await one_second()]
        # AND stays there while the bounce rate stays high: sends succeed for 10 minutes, the monitor ticks
        for minute in range(10):
            for _ in range(6):
                clock.now += 10
                await worker.report_success()
            rates["halved"].append(await one_second())
            if minute % 3 == 0:
                rates["actions"] += await tick_now()
        # WHEN the rate is healthy again (60 of 3,000 = 2 %), full speed is back
        await count_sent(queue.js, 2000)
        rates["restored_actions"] = await tick_now()  # type: ignore[assignment]
        rates["after"] = [await one_second()]
        await worker.close()
        return rates

    async def main() -> dict[str, list[int]]:
        async with Queue(QueueConfig(nats_url=isolated.settings.nats_url)) as queue:
            return await scenario(queue)

    rates = asyncio.run(main())
    assert rates["before"] == [QUOTA]
    assert rates["actions"] == ["rate_halved"]  # once, however many ticks see it
    assert rates["halved"] == [QUOTA // 2] * 11
    assert rates["restored_actions"] == ["rate_restored"]
    assert rates["after"] == [QUOTA]
