"""What the sending side looks like right now, and the operator's resume."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jetmail.services import QUEUES, Services

if TYPE_CHECKING:
    from jetmail.queue import Queue

# The rate limiter and the reputation monitor (and through them the providers, boto3 and aiosmtplib) are
# imported by the calls that need them: the API and the dashboard import this module at every cold start.


def status(services: Services) -> dict[str, Any]:
    """Limits, tokens used per window, throttling, warm-up, reputation figures and any stop."""
    from jetmail.deliverability.ratelimit import RateConfig, RateLimiter
    from jetmail.deliverability.reputation import Thresholds, read_state, window_figures
    from jetmail.kv import Kv

    async def gather(q: Queue) -> dict[str, Any]:
        kv = Kv(q.js, replicas=services.settings.stream_replicas)
        limiter = RateLimiter(kv, RateConfig.from_settings(services.settings), worker_id="status")
        try:
            limits = await limiter.status()
        finally:
            await limiter.close()
        figures = await window_figures(kv, services.counters, datetime.now(UTC), Thresholds())
        return {"limiter": limits, "reputation": figures, "stops": await read_state(kv)}

    result = services.queue.run(gather)
    result["queues"] = {name: services.queue.pending(name) for name in QUEUES}
    result["marketing_stopped"] = bool(result["stops"].get("marketing_stopped"))
    return result


def resume(services: Services) -> dict[str, Any]:
    """Clear the reputation stops and send the batches they parked."""
    from jetmail.campaigns.model import CampaignState
    from jetmail.deliverability.reputation import resume_marketing
    from jetmail.kv import Kv

    cleared = services.queue.run(lambda q: resume_marketing(Kv(q.js, replicas=services.settings.stream_replicas)))
    requeued = sum(services.campaigns.requeue_parked(item["id"])
                   for item in services.campaign_store.in_state(CampaignState.SENDING))
    services.audit.record("sending.resumed", target="marketing",
                          changes={"cleared": sorted(cleared), "requeued_batches": requeued})
    return {"cleared": sorted(cleared), "requeued_batches": requeued}
