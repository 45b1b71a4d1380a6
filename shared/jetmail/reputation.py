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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from jetmail.storage import keys

logger = logging.getLogger("jetmail.reputation")
BUCKET = "jetmail_reputation"
BUCKET_TTL_S = 3 * 86400
STATE_KEY = "state"


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


async def _bucket(js: Any) -> Any:
    try:
        return await js.key_value(BUCKET)
    except (BucketNotFoundError, NotFoundError):
        # made with the stream replicas by bootstrap (ensure_buckets); this is the single-node fallback
        return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, ttl=BUCKET_TTL_S,
                                                        storage=StorageType.FILE))


async def count_sent(js: Any, n: int, *, at: datetime | None = None) -> None:
    """Add ``n`` sends to the current hour (compare-and-set; retried on contention)."""
    if n <= 0:
        return
    kv = await _bucket(js)
    key = f"sent.{hour_key(at or datetime.now(UTC))}"
    for _ in range(20):
        try:
            entry = await kv.get(key)
            await kv.update(key, str(int(entry.value or b"0") + n).encode(), last=entry.revision)
            return
        except KeyNotFoundError:
            try:
                await kv.create(key, str(n).encode())
                return
            except KeyWrongLastSequenceError:
                continue
        except KeyWrongLastSequenceError:
            continue
    logger.warning("could not count %d sends after repeated contention", n)


async def read_state(js: Any) -> dict[str, Any]:
    kv = await _bucket(js)
    try:
        entry = await kv.get(STATE_KEY)
        return dict(json.loads(entry.value or b"{}"))
    except KeyNotFoundError:
        return {}


async def write_state(js: Any, state: dict[str, Any]) -> None:
    kv = await _bucket(js)
    await kv.put(STATE_KEY, json.dumps(state).encode())


async def window_figures(js: Any, stats: Any, now: datetime, thresholds: Thresholds) -> dict[str, Any]:
    kv = await _bucket(js)
    hours = [now - timedelta(hours=h) for h in range(thresholds.window_hours)]
    sent = 0
    for at in hours:
        try:
            entry = await kv.get(f"sent.{hour_key(at)}")
            sent += int(entry.value or b"0")
        except KeyNotFoundError:
            continue
    start = hours[-1].astimezone(UTC).strftime("%Y-%m-%dT%H")
    events: dict[str, int] = {"bounced_hard": 0, "complained": 0, "delivered": 0}
    for item in stats.query_all(pk=keys.STATS, sk_after=keys.hour(start)):
        if not item["sk"].startswith(keys.HOUR_PREFIX) or item["sk"] < keys.hour(start):
            continue
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
    def __init__(self, services: Any, *, thresholds: Thresholds | None = None) -> None:
        self.services = services
        self.thresholds = thresholds or Thresholds()

    async def check(self, js: Any, now: datetime) -> dict[str, Any]:
        """Evaluate the window and take each due action once; returns the figures and the actions."""
        t = self.thresholds
        figures = await window_figures(js, self.services.stats_table, now, t)
        state = await read_state(js)
        actions: list[str] = []
        bouncing = figures["enough_data"] and figures["bounce_rate"] > t.bounce_slow
        await self._slow_down(js, bouncing, figures, state, now, actions)
        if figures["enough_data"]:
            bounce, complaint = figures["bounce_rate"], figures["complaint_rate"]
            if complaint > t.complaint_pause and not state.get("campaigns_paused"):
                from jetmail.campaigns.model import CampaignState

                paused = []
                running = await asyncio.to_thread(self.services.campaign_store.in_state, CampaignState.SENDING)
                for item in running:
                    # in a thread: pausing mirrors the state through the synchronous client
                    try:
                        await asyncio.to_thread(self.services.campaigns.pause, item["id"])
                    except (LookupError, RuntimeError) as exc:
                        logger.warning("could not pause %s: %s", item["id"], exc)
                        continue
                    paused.append(item["id"])
                state["campaigns_paused"] = {"at": now.isoformat(), "campaigns": paused}
                actions.append("campaigns_paused")
            if (bounce > t.bounce_stop or complaint > t.complaint_stop) and not state.get("marketing_stopped"):
                state["marketing_stopped"] = now.isoformat()
                actions.append("marketing_stopped")
            delivery = figures["delivery_rate"]
            if delivery is not None and delivery < t.delivery_review and not state.get("list_review"):
                await asyncio.to_thread(self.services.queue.enqueue, "list_review", queue="email_maintenance",
                                        job_id=f"list-review-{now.strftime('%Y%m%d%H')}")
                state["list_review"] = now.isoformat()
                actions.append("list_review")
        figures["campaigns"], paused_campaigns = await self._campaigns(state)
        if paused_campaigns:
            state.setdefault("campaign_pauses", []).extend(paused_campaigns)
            actions.append("campaign_paused")
        if actions:
            await write_state(js, state)
            await asyncio.to_thread(self.alert, actions, figures)
        return {"figures": figures, "actions": actions, "state": state}

    async def _slow_down(self, js: Any, bouncing: bool, figures: dict[str, Any], state: dict[str, Any],
                         now: datetime, actions: list[str]) -> None:
        """Hold the shared limiter at ``slow_share`` of the provider limit while ``bouncing``; lift it
        once the bounce rate is healthy. The limiter's own key is the truth (an operator's resume
        clears ``rate_halved`` here, not the slow-down), so it is set and lifted whenever it differs."""
        from jetmail.ratelimit import RateConfig, RateLimiter

        limiter = RateLimiter(js, RateConfig.from_settings(self.services.settings), worker_id="reputation")
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
        running = await asyncio.to_thread(self.services.campaign_store.in_state, CampaignState.SENDING)
        for item in running:
            totals = await asyncio.to_thread(self.services.stats_table.get,
                                             *keys.campaign_counter(item["id"], keys.TOTALS)) or {}
            sent = int(item.get("sent", 0))
            bounce = int(totals.get("bounced_hard", 0)) / sent if sent else 0.0
            complaint = int(totals.get("complained", 0)) / sent if sent else 0.0
            figures[item["id"]] = {"sent": sent, "bounce_rate": bounce, "complaint_rate": complaint}
            if sent >= t.min_sample and (bounce > t.bounce_stop or complaint > t.complaint_stop) \
                    and item["id"] not in state.get("campaign_pauses", []):
                try:
                    await asyncio.to_thread(self.services.campaigns.pause, item["id"])
                except (LookupError, RuntimeError) as exc:
                    logger.warning("could not pause %s: %s", item["id"], exc)
                    continue
                paused.append(item["id"])
        return figures, paused

    def alert(self, actions: list[str], figures: dict[str, Any]) -> None:
        message = f"jetmail reputation: {', '.join(actions)} (bounce {figures['bounce_rate']:.2%}, " \
                  f"complaint {figures['complaint_rate']:.3%}, sent {figures['sent']} in " \
                  f"{figures['window_hours']} h)"
        logger.warning(message)
        topic = self.services.settings.alerts_topic_arn
        if topic:
            from jetmail.aws import aws_client

            aws_client("sns", self.services.settings).publish(TopicArn=topic, Subject="jetmail reputation alert",
                                                              Message=message)


async def resume_marketing(js: Any) -> dict[str, Any]:
    """The operator's ``jetmail sending resume``: clear every stop so the next spike acts again."""
    state = await read_state(js)
    cleared = {k: state.pop(k) for k in ("marketing_stopped", "campaigns_paused", "rate_halved", "campaign_pauses")
               if k in state}
    await write_state(js, state)
    return cleared


def review_contacts(services: Any, *, inactive_days: int, soft_bounces: int, now: datetime | None = None) -> int:
    """Set ``attributes.review`` on contacts that soft-bounce repeatedly or never engage; returns how many."""
    from jetmail.contacts import ContactUpsert

    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=inactive_days)
    flagged = 0
    for contact in services.contacts.iter_contacts():
        reason = None
        soft = services.table.get(*keys.soft_bounces(contact.email.lower()))
        if soft and len(soft.get("bounces", [])) >= soft_bounces:
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
