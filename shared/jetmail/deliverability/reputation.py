"""Sender-reputation monitor: stop ourselves before the provider has to.

Runs on the scheduler tick, for the account and for each running campaign, over a rolling
window (default the last 24 h, whole hours): permanent
bounces / sent and complaints / sent, from the hourly account-wide counters (events in the stats
table ``STATS``/``HOUR#…``, sends in NATS KV ``sent.<hour>`` — counted once per batch or message,
so they cost no DynamoDB request). Each threshold action fires once per episode and is remembered
in KV until the rates are healthy again or an operator resumes:

* bounce rate > 5 %: halve the send rate and alert. Every worker sends at half of its own provider
  limit (its SES quota on AWS, not the settings default) for as long as the rate stays above 5 %: a
  slow-down on the shared limiter that does not recover by itself, unlike a throttle; it is lifted
  when the rate is back under 5 % (or the window no longer holds the minimum sample);
* complaint rate > 0.1 %: pause every running campaign and alert;
* bounce rate > 10 % or complaint rate > 0.5 %: stop all marketing sending until
  ``jetmail sending resume`` (batches park as for a pause);
* delivery rate < 95 % (when delivery events are reported): enqueue a list review that flags
  contacts with repeated soft bounces or no engagement in 180 days;
* a running campaign whose own bounce rate > 10 % or complaint rate > 0.5 % (over its sends, at
  least the minimum sample) is paused on its own.

Alerts go to the alerts SNS topic (``JETMAIL_ALERTS_TOPIC_ARN``) and the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from nats.js import JetStreamContext

from jetmail.kv import REPUTATION, Bucket, Contended, Kv

if TYPE_CHECKING:
    from jetmail.campaigns.model import CampaignState
    from jetmail.config import Settings

logger = logging.getLogger("jetmail.deliverability.reputation")
STATE_KEY = "state"


class StatsTable(Protocol):
    """The counters (``jetmail.reporting.counters.Counters``): the account's hourly figures and each
    campaign's totals."""

    def account(self, granularity: Literal["day", "hour"], *, after: str) -> dict[str, dict[str, Any]]: ...

    def campaign_totals(self, campaign_id: str) -> dict[str, Any]: ...


class CampaignStore(Protocol):
    def in_state(self, state: CampaignState) -> Iterable[dict[str, Any]]: ...


class CampaignPauser(Protocol):
    def pause(self, campaign_id: str) -> object: ...


class JobQueue(Protocol):
    def enqueue(self, task: str, *, queue: str, job_id: str | None = None) -> object: ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    window_hours: int = 24
    min_sample: int = 500
    bounce_slow: float = 0.05
    bounce_stop: float = 0.10
    complaint_pause: float = 0.001
    complaint_stop: float = 0.005
    delivery_review: float = 0.95
    slow_share: float = 0.5  # of the provider limit, while the bounce rate is over ``bounce_slow``


def hour_key(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H")


async def _bucket(kv: Kv | JetStreamContext) -> Bucket:
    # made with the stream replicas by ``jetmail init`` and every worker; a bare JetStream context makes it R1
    return await Kv.of(kv).bucket(REPUTATION)


async def count_sent(kv: Kv | JetStreamContext, n: int, *, at: datetime | None = None) -> None:
    """Add ``n`` sends to the current hour (a KV counter: a get and a conditional write, again on contention)."""
    if n <= 0:
        return
    try:
        await (await _bucket(kv)).add(f"sent.{hour_key(at or datetime.now(UTC))}", n)
    except Contended:
        logger.warning("could not count %d sends after repeated contention", n)


async def read_state(kv: Kv | JetStreamContext) -> dict[str, Any]:
    entry = await (await _bucket(kv)).get(STATE_KEY)
    return dict(json.loads(entry.value or b"{}")) if entry is not None else {}


async def write_state(kv: Kv | JetStreamContext, state: dict[str, Any]) -> None:
    await (await _bucket(kv)).put(STATE_KEY, json.dumps(state).encode())


async def window_figures(kv: Kv | JetStreamContext, stats: StatsTable, now: datetime,
                         thresholds: Thresholds) -> dict[str, Any]:
    bucket = await _bucket(kv)
    hours = [now - timedelta(hours=h) for h in range(thresholds.window_hours)]
    sent = 0
    for at in hours:
        entry = await bucket.get(f"sent.{hour_key(at)}")
        if entry is not None:
            sent += int(entry.value or b"0")
    start = hours[-1].astimezone(UTC).strftime("%Y-%m-%dT%H")
    events: dict[str, int] = {"bounced_hard": 0, "complained": 0, "delivered": 0}
    for item in stats.account("hour", after=start).values():
        for name in events:
            events[name] += int(item.get(name, 0))
    rates = {
        "bounce_rate": events["bounced_hard"] / sent if sent else 0.0,
        "complaint_rate": events["complained"] / sent if sent else 0.0,
        "delivery_rate": events["delivered"] / sent if sent and events["delivered"] else None,
    }
    return {"window_hours": thresholds.window_hours, "sent": sent, **events, **rates,
            "enough_data": sent >= thresholds.min_sample}


class ReputationMonitor:
    """``stats``: the stats table; ``store``: which campaigns are sending; ``campaigns``: pauses one;
    ``queue``: enqueues the list review; ``settings``: the provider's rate limits and the alerts topic."""

    def __init__(self, *, stats: StatsTable, store: CampaignStore, campaigns: CampaignPauser, queue: JobQueue,
                 settings: Settings, thresholds: Thresholds | None = None) -> None:
        self.stats = stats
        self.store = store
        self.campaigns = campaigns
        self.queue = queue
        self.settings = settings
        self.thresholds = thresholds or Thresholds()

    async def check(self, kv: Kv | JetStreamContext, now: datetime) -> dict[str, Any]:
        """Evaluate the window and take each due action once; returns the figures and the actions."""
        t = self.thresholds
        figures = await window_figures(kv, self.stats, now, t)
        state = await read_state(kv)
        actions: list[str] = []
        bouncing = figures["enough_data"] and figures["bounce_rate"] > t.bounce_slow
        await self._slow_down(kv, bouncing, figures, state, now, actions)
        if figures["enough_data"]:
            bounce, complaint = figures["bounce_rate"], figures["complaint_rate"]
            if complaint > t.complaint_pause and not state.get("campaigns_paused"):
                from jetmail.campaigns.model import CampaignState

                running = await asyncio.to_thread(self.store.in_state, CampaignState.SENDING)
                paused = [item["id"] for item in running if await self._pause(item["id"])]
                state["campaigns_paused"] = {"at": now.isoformat(), "campaigns": paused}
                actions.append("campaigns_paused")
            if (bounce > t.bounce_stop or complaint > t.complaint_stop) and not state.get("marketing_stopped"):
                state["marketing_stopped"] = now.isoformat()
                actions.append("marketing_stopped")
            delivery = figures["delivery_rate"]
            if delivery is not None and delivery < t.delivery_review and not state.get("list_review"):
                await asyncio.to_thread(self.queue.enqueue, "list_review", queue="email_maintenance",
                                        job_id=f"list-review-{now.strftime('%Y%m%d%H')}")
                state["list_review"] = now.isoformat()
                actions.append("list_review")
        figures["campaigns"], paused_campaigns = await self._campaigns(state)
        if paused_campaigns:
            state.setdefault("campaign_pauses", []).extend(paused_campaigns)
            actions.append("campaign_paused")
        if actions:
            await write_state(kv, state)
            await asyncio.to_thread(self.alert, actions, figures)
        return {"figures": figures, "actions": actions, "state": state}

    async def _slow_down(self, kv: Kv | JetStreamContext, bouncing: bool, figures: dict[str, Any],
                         state: dict[str, Any], now: datetime, actions: list[str]) -> None:
        """Hold the shared limiter at ``slow_share`` of the provider limit while ``bouncing``; lift it
        once the bounce rate is healthy. The limiter's own key is the truth (an operator's resume
        clears ``rate_halved`` here, not the slow-down), so it is set and lifted whenever it differs."""
        from jetmail.deliverability.ratelimit import RateConfig, RateLimiter

        limiter = RateLimiter(kv, RateConfig.from_settings(self.settings), worker_id="reputation")
        active = await limiter.read_slowdown() < 1.0
        if bouncing and (not active or not state.get("rate_halved")):
            await limiter.set_slowdown(self.thresholds.slow_share,
                                       reason=f"bounce rate {figures['bounce_rate']:.2%} over "
                                              f"{self.thresholds.bounce_slow:.0%}")
            if not state.get("rate_halved"):
                state["rate_halved"] = now.isoformat()
                actions.append("rate_halved")
        elif not bouncing and (active or state.get("rate_halved")):
            await limiter.set_slowdown(None)
            state.pop("rate_halved", None)  # healthy again: a later spike halves once more
            actions.append("rate_restored")

    async def _campaigns(self, state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Per running campaign: its bounce and complaint rates; a campaign past the stop thresholds
        is paused on its own (once), even when the account as a whole looks healthy."""
        from jetmail.campaigns.model import CampaignState

        t = self.thresholds
        figures: dict[str, Any] = {}
        paused: list[str] = []
        running = await asyncio.to_thread(self.store.in_state, CampaignState.SENDING)
        for item in running:
            totals = await asyncio.to_thread(self.stats.campaign_totals, item["id"])
            sent = int(item.get("sent", 0))
            bounce = int(totals.get("bounced_hard", 0)) / sent if sent else 0.0
            complaint = int(totals.get("complained", 0)) / sent if sent else 0.0
            figures[item["id"]] = {"sent": sent, "bounce_rate": bounce, "complaint_rate": complaint}
            if sent >= t.min_sample and (bounce > t.bounce_stop or complaint > t.complaint_stop) \
                    and item["id"] not in state.get("campaign_pauses", []) and await self._pause(item["id"]):
                paused.append(item["id"])
        return figures, paused

    async def _pause(self, campaign_id: str) -> bool:
        """Pause one campaign; False (and a warning) when it cannot be, e.g. it finished meanwhile."""
        # in a thread: pausing mirrors the state through the synchronous client
        try:
            await asyncio.to_thread(self.campaigns.pause, campaign_id)
        except (LookupError, RuntimeError) as exc:
            logger.warning("could not pause %s: %s", campaign_id, exc)
            return False
        return True

    def alert(self, actions: list[str], figures: dict[str, Any]) -> None:
        message = f"jetmail reputation: {', '.join(actions)} (bounce {figures['bounce_rate']:.2%}, " \
                  f"complaint {figures['complaint_rate']:.3%}, sent {figures['sent']} in " \
                  f"{figures['window_hours']} h)"
        logger.warning(message)
        topic = self.settings.alerts_topic_arn
        if topic:
            from jetmail.aws.clients import aws_client

            aws_client("sns", self.settings).publish(TopicArn=topic, Subject="jetmail reputation alert",
                                                     Message=message)


async def resume_marketing(kv: Kv | JetStreamContext) -> dict[str, Any]:
    """The operator's ``jetmail sending resume``: clear every stop so the next spike acts again."""
    state = await read_state(kv)
    cleared = {k: state.pop(k) for k in ("marketing_stopped", "campaigns_paused", "rate_halved", "campaign_pauses")
               if k in state}
    await write_state(kv, state)
    return cleared


def review_contacts(services: Any, *, inactive_days: int, soft_bounces: int, now: datetime | None = None) -> int:
    """Set ``attributes.review`` on contacts that soft-bounce repeatedly or never engage; returns how many."""
    from jetmail.audience.model import ContactUpsert

    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=inactive_days)
    flagged = 0
    for contact in services.contacts.iter_contacts():
        reason = None
        if len(services.feedback.soft_bounces.of(contact.email.lower())) >= soft_bounces:
            reason = "soft_bounces"
        else:
            seen = [t for t in (contact.last_opened_at, contact.last_clicked_at) if t is not None]
            created = datetime.fromisoformat(contact.created_at) if contact.created_at else now
            latest = max([*seen, created])
            if latest < cutoff:
                reason = "inactive"
        if reason and (contact.attributes or {}).get("review") != reason:
            services.contacts.upsert(contact.email, ContactUpsert(attributes={"review": reason}))
            flagged += 1
    return flagged
