"""The scheduler tick: what EventBridge runs every minute and `jetmail scheduler` runs locally.

It runs the sender-reputation monitor (``jetmail.deliverability.reputation``), starts campaigns whose time has
come (native JetStream schedules normally start them first;
this is the safety net, and the conditional state change makes the second start a no-op), decides
A/B tests whose duration is over, marks campaigns whose batches have all reported as sent, and drops double
opt-in subscriptions left unconfirmed for ``pending_expiry_days``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from jetmail.campaigns.model import CampaignState
from jetmail.services import Services

logger = logging.getLogger("jetmail.scheduler")


def tick(services: Services, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    campaigns = services.campaigns
    started = [cid for cid in services.campaign_store.due(now) if campaigns.start_due(cid) is not None]
    decided: dict[str, str] = {}
    finished: list[str] = []
    for item in services.campaign_store.in_state(CampaignState.SENDING):
        outcome = campaigns.evaluate_ab(item["id"], now)
        if outcome:
            decided[item["id"]] = outcome
        if campaigns.finish_if_done(item["id"]):
            finished.append(item["id"])
    from jetmail.deliverability.reputation import ReputationMonitor
    from jetmail.kv import Kv, KvUnavailable

    settings = services.settings
    monitor = ReputationMonitor(stats=services.counters, store=services.campaign_store,
                                campaigns=services.campaigns, queue=services.queue, settings=settings)
    try:
        reputation = services.queue.run(lambda q: monitor.check(Kv(q.js, replicas=settings.stream_replicas), now))
    except KvUnavailable as exc:
        # a NATS leader election or outage: the rest of the tick still runs, the next tick checks again
        logger.warning("reputation check skipped: %s", exc)
        reputation = {"actions": [], "skipped": str(exc)}
    from jetmail.audience.intake import expire_unconfirmed
    from jetmail.reporting.queue_lag import publish_queue_lag

    # one Query of the due pending rows: unconfirmed double opt-in subscriptions past their time
    expired = expire_unconfirmed(services.contacts, before=now - timedelta(days=settings.pending_expiry_days),
                                 audit=services.audit, pseudonym=services.pseudonyms.pseudonym)
    summary = {"at": now.isoformat(), "started": started, "ab_decided": decided, "finished": finished,
               "reputation_actions": reputation["actions"], "queue_lag_s": publish_queue_lag(services),
               "subscriptions_expired": expired}
    if started or decided or finished or reputation["actions"] or expired:
        logger.info("tick: %s", summary)
    return summary
