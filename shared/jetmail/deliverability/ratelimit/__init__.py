"""Send-rate control shared by every worker on every machine: provider limits per second, minute, hour
and day, per-recipient-domain limits, a share reserved for transactional mail, adaptive slow-down on
provider throttling (AIMD) and a warm-up schedule of daily caps.

Why NATS KV and not DynamoDB conditional counters: every send takes a token, so the counter store is
on the hot path of every campaign. DynamoDB serves ~150-250 requests/s against the local emulator and
bills per request in AWS; a conditional write per send would double what a campaign costs in
DynamoDB (one write per message is already spent on its status). KV compare-and-set is cheap (a few
thousand updates/s from one process, correct under contention), lives in the NATS the workers
already hold a connection to, and gives per-key TTLs, so finished windows clean themselves up.
Workers still take tokens in small batches, one CAS per window per batch, not one per message.

Accuracy: windows are fixed and aligned to wall-clock seconds, minutes and UTC days, the same seconds
the receiving side counts in. Tokens of a second are handed out only inside that second and not in
its last ``guard`` seconds (50 ms by default), so a message granted in second N arrives in second N
when its send takes less than that. Sends made with ``sending()`` are timed: those still in flight
when second N+1 begins are charged to N+1 as well when the worker first takes tokens in it (a busy
worker does so at once), so slow sends cannot push a second over the limit either. Sends inside a
second are not spread out: SES accepts short bursts above ``MaxSendRate`` and slows us down (see
AIMD) when it does not. Across machines the windows are as aligned as the machines' clocks: keep
them synchronised (chrony, or the Amazon Time Sync Service that Fargate tasks use).

Batches: a worker takes at most what it needs (sends waiting in ``acquire``, or its pace in the
previous second) and never more than half its fair share of a window (``limit / (2 x active
workers)``; workers heartbeat into ``<provider>.workers``), so tokens are not hoarded and a batch is
used up early in its second. At 50/s with 4 workers that is 7 tokens per CAS.

    limiter = RateLimiter(queue.js, RateConfig.from_settings(settings), worker_id=f"{host}-{pid}")
    async with limiter.sending(category="marketing", domain="gmail.com"):  # waits for a token
        await provider.send(message)      # timed; throttling and success are reported for you
    # or by hand:
    await limiter.acquire(category="transactional", domain="gmail.com")
    wait = await limiter.try_acquire(category="marketing", domain=...)  # 0 or seconds to wait: nak(wait)
    await limiter.report_throttle()   # on TemporaryDeliveryError(throttled=True)
    await limiter.report_success()    # after each accepted send
    await limiter.status()            # limits, window usage, throttling, warm-up
    await limiter.close()             # at shutdown
"""

from jetmail.deliverability.ratelimit.config import BUCKET, RateConfig, RateLimits, limits_from_ses, normalize_domain
from jetmail.deliverability.ratelimit.limiter import RateLimiter, RateLimitError
from jetmail.deliverability.ratelimit.windows import Category, Window, plan, spread

__all__ = [
    "BUCKET",
    "Category",
    "RateConfig",
    "RateLimitError",
    "RateLimiter",
    "RateLimits",
    "Window",
    "limits_from_ses",
    "normalize_domain",
    "plan",
    "spread",
]
