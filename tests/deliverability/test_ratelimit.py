"""The shared send-rate limiter against the session's real nats-server (and its SMTP sink for the
multi-process test). Window logic is driven with an explicit clock where time matters, so a minute,
a day or a throttle recovery takes no real time."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.stub import Stubber

from jetmail.aws.clients import aws_client
from jetmail.config import ConfigError, Settings
from jetmail.deliverability.ratelimit import RateConfig, RateLimiter, RateLimits, limits_from_ses, plan, spread
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.messaging.providers import TemporaryDeliveryError
from jetmail.queue import Queue, QueueConfig

HELPER = Path(__file__).resolve().parent / "ratelimit_tasks.py"
T = TypeVar("T")


class Clock:
    """Wall-clock time that moves only when told."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0.0) -> float:
    whole = math.floor(second)
    stamp = datetime(year, month, day, hour, minute, whole, tzinfo=UTC).timestamp()
    return stamp + (second - whole)


def run(scenario: Callable[[Queue], Awaitable[T]], nats_url: str) -> T:
    async def main() -> T:
        async with Queue(QueueConfig(nats_url=nats_url)) as queue:
            return await scenario(queue)

    return asyncio.run(main())


async def take_all(limiter: RateLimiter, *, category: Any, domain: str = "", most: int = 1000) -> tuple[int, float]:
    """Take tokens until the limiter says wait: (tokens taken, the wait it returned)."""
    for taken in range(most):
        wait = await limiter.try_acquire(category=category, domain=domain)
        if wait > 0:
            return taken, wait
    return most, 0.0


# ---- acceptance: several worker processes, one limit, counted where the mail arrives

# Wall-clock acceptance on a 2-core machine shared with nats-server, moto and the sink: a scheduling hiccup
# of the host can push one send across a second boundary, so a failing run is tried once more.
@pytest.mark.flaky(reruns=1)
def test_four_processes_at_50_per_second_never_exceed_it_in_any_second(
        app_env: dict[str, str], mailbox: Mailbox, unique: str, tmp_path: Path) -> None:
    # GIVEN four sending processes sharing a 50/s limit (and nothing else)
    env = {**app_env, "JETMAIL_RATE_PER_SECOND": "50", "JETMAIL_RATE_PER_DAY": "0",
           "JETMAIL_RATE_DOMAIN_LIMITS": "{}"}
    tag = f"rl4-{unique}"
    started = time.time()
    procs = []
    for n in range(4):
        out = (tmp_path / f"worker{n}.log").open("wb")
        procs.append(subprocess.Popen(
            [sys.executable, str(HELPER), "--count", "250", "--tag", f"{tag}-{n}", "--bucket", f"rl_{unique}",
             "--concurrency", "8"], env=env, stdout=out, stderr=subprocess.STDOUT))
    # WHEN they send 1,000 messages in all
    for n, proc in enumerate(procs):
        assert proc.wait(timeout=60) == 0, (tmp_path / f"worker{n}.log").read_text()
    wait_until(lambda: len(_arrivals(mailbox, tag)) >= 1000, timeout=10, what="1,000 messages at the sink")
    arrivals = _arrivals(mailbox, tag)
    # THEN every message arrived, no second (by arrival time at the sink) holds more than 50,
    per_second = Counter(math.floor(t) for t in arrivals)
    assert len(arrivals) == 1000
    assert max(per_second.values()) <= 50, sorted(per_second.items())
    # AND the limit was used: 1,000 at 50/s takes 20 windows, about 19-20 s from first to last arrival
    span = max(arrivals) - min(arrivals)
    assert 18.0 <= span <= 24.0, (span, sorted(per_second.items()))
    assert time.time() - started < 40


def _arrivals(mailbox: Mailbox, tag: str) -> list[float]:
    return [e.received_at for e in mailbox.entries() if any(r.startswith(tag) for r in e.rcpt_tos)]


# ---- the transactional share

def test_transactional_keeps_its_share_while_marketing_saturates(nats_url: str, unique: str) -> None:
    # GIVEN 20/s with 25 % reserved for transactional mail, and two workers
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=20), transactional_share=0.25,
                        bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> Counter[tuple[int, str]]:
        workers = [RateLimiter(queue.js, config, worker_id=f"w{n}") for n in range(2)]
        grants: Counter[tuple[int, str]] = Counter()
        end = math.floor(time.time()) + 4.0

        async def sender(limiter: RateLimiter, category: Any) -> None:
            while True:
                await limiter.acquire(category=category, domain="example.com")
                granted_at = time.time()
                if granted_at >= end:
                    return
                grants[(math.floor(granted_at), category)] += 1

        # WHEN both workers push marketing mail as fast as they can, and one also sends transactional
        await asyncio.gather(*(sender(w, "marketing") for w in workers for _ in range(6)),
                             *(sender(workers[0], "transactional") for _ in range(2)))
        return grants

    grants = run(scenario, nats_url)
    seconds = sorted({s for s, _ in grants})[1:]  # the first second is only partly inside the run
    assert len(seconds) >= 2
    for second in seconds:
        marketing, transactional = grants[(second, "marketing")], grants[(second, "transactional")]
        # THEN marketing never takes more than 75 % of a second, transactional gets the rest,
        # and together they stay within the limit
        assert marketing <= 15, (second, grants)
        assert transactional >= 5, (second, grants)
        assert marketing + transactional <= 20, (second, grants)


def test_marketing_alone_stops_at_its_share_and_transactional_may_use_everything(
        nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 3, 4, 10, 0, 7.2))
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=50), transactional_share=0.2,
                        bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> tuple[int, float, int, int]:
        a = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        b = RateLimiter(queue.js, config, worker_id="b", clock=clock)
        marketing, wait = await take_all(a, category="marketing")
        marketing_b, _ = await take_all(b, category="marketing")
        transactional, _ = await take_all(b, category="transactional")
        return marketing, wait, marketing_b, transactional

    marketing, wait, marketing_b, transactional = run(scenario, nats_url)
    # marketing gets 40 of the second across workers, and waits for the next second
    assert marketing + marketing_b == 40
    assert wait == pytest.approx(0.8, abs=0.01)
    # transactional gets the 10 left (it may use all 50 when marketing leaves them)
    assert transactional == 10


# ---- sending(): timed sends

def test_a_send_still_in_flight_when_the_next_second_begins_counts_in_it(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 3, 4, 12, 0, 3.5))
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=10), transactional_share=0,
                        bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> tuple[int, int]:
        limiter = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        # GIVEN a send granted in one second that is still going when the next one starts
        async with limiter.sending(category="marketing", domain="example.com"):
            clock.advance(1.0)
            # WHEN the worker sends as much as it can in that next second
            during, _ = await take_all(limiter, category="marketing")
        clock.advance(1.0)
        after, _ = await take_all(limiter, category="marketing")
        return during, after

    during, after = run(scenario, nats_url)
    # THEN the slow send took one of that second's tokens; a second without one gets all ten
    assert (during, after) == (9, 10)


def test_sending_reports_throttling_and_success_for_the_caller(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 3, 4, 12, 30, 0.2))
    config = RateConfig(provider="ses", limits=RateLimits(per_second=10), recovery_interval=10,
                        bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> list[float]:
        limiter = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        rates = []
        # GIVEN a provider that says "slow down"
        with pytest.raises(TemporaryDeliveryError):
            async with limiter.sending(category="transactional", domain="example.com"):
                raise TemporaryDeliveryError("421 too many messages", throttled=True)
        rates.append((await limiter.status())["throttling"]["effective_per_second"])
        # AND another that fails for reasons of its own
        with pytest.raises(TemporaryDeliveryError):
            async with limiter.sending(category="transactional", domain="example.com"):
                raise TemporaryDeliveryError("451 try again later")
        rates.append((await limiter.status())["throttling"]["effective_per_second"])
        # WHEN sends succeed for long enough
        clock.advance(11.0)
        async with limiter.sending(category="transactional", domain="example.com"):
            pass
        rates.append((await limiter.status())["throttling"]["effective_per_second"])
        return rates

    # THEN only the throttle halved the rate, and a success after the interval raised it
    assert run(scenario, nats_url) == [5.0, 5.0, 5.5]


# ---- per-domain limits

def test_a_domain_limit_holds_while_other_domains_flow(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 3, 4, 10, 15, 20.0))
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=1000), domains={"Slow.Test": 5},
                        bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> dict[str, Any]:
        a = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        b = RateLimiter(queue.js, config, worker_id="b", clock=clock)
        out: dict[str, Any] = {}
        # GIVEN two workers sending to a domain limited to 5 a minute (addresses and case accepted)
        out["a"], out["wait"] = await take_all(a, category="transactional", domain="SLOW.test.")
        out["b"], _ = await take_all(b, category="transactional", domain="someone@slow.test")
        # WHEN the limited domain is spent, other domains still flow
        out["other"] = [await a.try_acquire(category="transactional", domain="fast.test") for _ in range(30)]
        # AND in the next minute the domain opens again
        clock.advance(40.0)
        out["next_minute"], _ = await take_all(b, category="transactional", domain="slow.test")
        out["status"] = await a.status()
        return out

    out = run(scenario, nats_url)
    assert out["a"] + out["b"] == 5
    assert out["wait"] == pytest.approx(40.0, abs=0.01)
    assert out["other"] == [0.0] * 30
    assert out["next_minute"] == 5
    assert out["status"]["domains"]["slow.test"]["used"] == 5
    assert out["status"]["limits"]["domains_per_minute"] == {"slow.test": 5}


# ---- adaptive rate

def test_throttling_halves_the_rate_for_every_worker_and_it_recovers_slowly(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 3, 4, 11, 0, 0.1))
    config = RateConfig(provider="ses", limits=RateLimits(per_second=40), transactional_share=0,
                        throttle_factor=0.5, throttle_floor=4, recovery_step=0.05, recovery_interval=10,
                        bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> dict[str, Any]:
        a = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        b = RateLimiter(queue.js, config, worker_id="b", clock=clock)
        rates: dict[str, Any] = {}
        rates["before"], _ = await take_all(a, category="marketing")
        # GIVEN worker a is told to slow down, and b hears the same in that episode
        await a.report_throttle()
        await b.report_throttle()
        clock.advance(1.0)
        # THEN both see half the rate, counted once
        rates["after_a"], _ = await take_all(a, category="marketing")
        rates["after_b"], _ = await take_all(b, category="marketing")
        status = await b.status()
        rates["status"] = status["throttling"]
        # WHEN sends succeed, the rate rises by 5 % of 40 every 10 s, not sooner
        recovered = []
        for _ in range(12):
            clock.advance(5.0)
            await b.report_success()
            await a.report_success()
            recovered.append((await a.status())["throttling"]["effective_per_second"])
        rates["recovered"] = recovered
        clock.advance(1.0)
        rates["full"], _ = await take_all(b, category="marketing")
        # AND repeated throttling never goes below the floor
        for _ in range(6):
            clock.advance(2.0)
            await a.report_throttle()
        rates["floor"] = (await a.status())["throttling"]["effective_per_second"]
        return rates

    rates = run(scenario, nats_url)
    assert rates["before"] == 40
    assert rates["after_a"] + rates["after_b"] == 20
    assert rates["status"]["effective_per_second"] == 20
    assert rates["status"]["throttled"] is True and rates["status"]["throttles"] == 1
    assert rates["recovered"] == [20, 22, 22, 24, 24, 26, 26, 28, 28, 30, 30, 32]
    assert rates["full"] == 32
    assert rates["floor"] == 4


# ---- warm-up

def test_warmup_cap_stops_marketing_for_the_rest_of_the_day(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 5, 6, 21, 0, 0.5))
    config = RateConfig(provider="ses", limits=RateLimits(per_second=1000), warmup_schedule=(5, 8),
                        warmup_start=date(2031, 5, 6), bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> dict[str, Any]:
        limiter = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        out: dict[str, Any] = {}
        # GIVEN day 1 of the warm-up (cap 5) and two password resets already sent today
        out["transactional"] = [await limiter.try_acquire(category="transactional") for _ in range(2)]
        # WHEN marketing sends until the cap
        out["day1"], out["wait"] = await take_all(limiter, category="marketing")
        # THEN transactional mail still goes out (counted, never held back by the warm-up)
        out["transactional_after"] = await limiter.try_acquire(category="transactional")
        out["status1"] = (await limiter.status())["warmup"]
        # AND the next UTC day has the next cap
        clock.advance(3 * 3600)
        out["day2"], _ = await take_all(limiter, category="marketing")
        # AND after the schedule there is no cap
        clock.advance(86400)
        out["day3"], _ = await take_all(limiter, category="marketing", most=50)
        out["status3"] = (await limiter.status())["warmup"]
        return out

    out = run(scenario, nats_url)
    assert out["transactional"] == [0.0, 0.0]
    assert out["day1"] == 3
    assert out["wait"] == pytest.approx(3 * 3600 - 0.5, abs=0.01)  # until 00:00 UTC, not a spin
    assert out["transactional_after"] == 0.0
    assert out["status1"] == {"start": "2031-05-06", "day": 1, "cap": 5, "used": 6, "finished": False}
    assert out["day2"] == 8
    assert out["day3"] == 50
    assert out["status3"]["finished"] is True


# ---- shared state hygiene

def test_window_counters_carry_a_ttl_and_close_gives_back_unused_tokens(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 7, 1, 9, 30, 10.0))
    config = RateConfig(provider="smtp", limits=RateLimits(per_minute=100), bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> dict[str, Any]:
        limiter = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        # GIVEN a worker that sent 10 in one second, so it takes bigger batches the next
        for _ in range(10):
            assert await limiter.try_acquire(category="marketing") == 0
        clock.advance(1.0)
        assert await limiter.try_acquire(category="marketing") == 0
        held = (await limiter.status())["windows"]["minute"]["used"]
        key = plan(config, now=clock(), rate=None, domain=None)[0].key
        raw = await queue.js.get_last_msg(f"KV_{config.bucket}", f"$KV.{config.bucket}.{key}")
        # WHEN it closes
        await limiter.close()
        after = (await RateLimiter(queue.js, config, worker_id="b", clock=clock).status())
        return {"held": held, "ttl": (raw.headers or {}).get("Nats-TTL"), "after": after}

    out = run(scenario, nats_url)
    # THEN the counter expires by itself after its window, and the tokens it did not use are returned
    assert out["ttl"] == str(2 * 60 + 10)
    assert out["held"] > 11
    assert out["after"]["windows"]["minute"]["used"] == 11
    assert out["after"]["active_workers"] == 0


# ---- configuration

def test_settings_give_the_config_and_a_schedule_needs_a_start(settings: Settings) -> None:
    def with_rates(**overrides: Any) -> Settings:
        return Settings(_env_file=None, table_name=settings.table_name,  # type: ignore[call-arg]
                        signing_secret=settings.signing_secret, **overrides)

    config = RateConfig.from_settings(with_rates(
        rate_per_second=0, rate_per_hour=5000, rate_domain_limits="gmail.com=600, Yahoo.com=300",
        rate_warmup_schedule="200,500,1000", rate_warmup_start="2031-01-01"))
    assert config.limits == RateLimits(per_second=None, per_minute=None, per_hour=5000, per_day=50000)
    assert dict(config.domains) == {"gmail.com": 600, "yahoo.com": 300}
    assert config.warmup(at(2031, 1, 2, 23, 59, 59)) == (2, 500)
    assert config.warmup(at(2031, 1, 4)) is None
    as_json = with_rates(rate_domain_limits='{"gmail.com": 10}', rate_warmup_schedule="[1, 2]",
                         rate_warmup_start="2031-01-01")
    assert dict(RateConfig.from_settings(as_json).domains) == {"gmail.com": 10}
    with pytest.raises(ConfigError, match="JETMAIL_RATE_WARMUP_START"):
        RateConfig.from_settings(with_rates(rate_warmup_schedule="200,500"))


def test_limits_from_the_ses_account_quota(settings: Settings) -> None:
    client = aws_client("sesv2", settings)
    with Stubber(client) as stub:
        stub.add_response("get_account", {"SendQuota": {"Max24HourSend": 200000.0, "MaxSendRate": 70.0,
                                                        "SentLast24Hours": 10.0}})
        stub.add_response("get_account", {"SendQuota": {"Max24HourSend": -1.0, "MaxSendRate": 14.0}})
        limits = limits_from_ses(client, base=RateLimits(per_minute=3000, per_day=5))
        unlimited_day = limits_from_ses(client)
    assert limits == RateLimits(per_second=70.0, per_minute=3000, per_day=200000)
    assert unlimited_day == RateLimits(per_second=14.0, per_day=None)
    config = replace(RateConfig.from_settings(settings), limits=limits)
    assert config.limits.per_second == 70.0


def test_a_fractional_rate_averages_out_and_the_guard_closes_each_second() -> None:
    assert [spread(2.5, s) for s in range(1_700_000_000, 1_700_000_004)] == [2, 3, 2, 3]
    assert sum(spread(0.3, s) for s in range(1_700_000_000, 1_700_000_100)) == 30
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=10), transactional_share=0.2)
    second = plan(config, now=1_700_000_000.5, rate=10, domain=None)[0]
    assert (second.limit, second.marketing_limit, second.end) == (10, 8, 1_700_000_001)


def test_a_limiter_in_the_guard_waits_for_the_next_second(nats_url: str, unique: str) -> None:
    clock = Clock(at(2031, 3, 4, 10, 0, 7.97))
    config = RateConfig(provider="smtp", limits=RateLimits(per_second=50), guard=0.05, bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> tuple[float, float]:
        limiter = RateLimiter(queue.js, config, worker_id="a", clock=clock)
        late = await limiter.try_acquire(category="transactional")
        clock.advance(0.04)
        return late, await limiter.try_acquire(category="transactional")

    late, next_second = run(scenario, nats_url)
    assert late == pytest.approx(0.03, abs=0.002)
    assert next_second == 0.0


def test_unknown_category_is_refused(nats_url: str, unique: str) -> None:
    config = RateConfig(provider="smtp", bucket=f"rl_{unique}")

    async def scenario(queue: Queue) -> None:
        limiter = RateLimiter(queue.js, config, worker_id="a")
        with pytest.raises(ValueError, match="category"):
            await limiter.try_acquire(category="newsletter", domain="example.com")  # type: ignore[arg-type]

    run(scenario, nats_url)
