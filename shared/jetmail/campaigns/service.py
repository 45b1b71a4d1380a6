"""Campaign actions (API, CLI, scheduler tick): create, send, schedule, pause, resume, cancel, A/B.

Every state change is a conditional write on the campaign item, so two callers racing (the
EventBridge tick and a native schedule, a double click on "send") change it once; the new state is
then mirrored to the KV state board the workers read before each send.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from jetmail.campaigns.model import (
    ABResult,
    AudienceSource,
    CampaignCreate,
    CampaignFailurePage,
    CampaignPublic,
    CampaignState,
    CampaignUpdate,
    Progress,
    ScheduleRequest,
    VariantStats,
)
from jetmail.campaigns.signals import publish_state
from jetmail.campaigns.store import CampaignNotFound, CampaignStore, InvalidTransition, now_iso
from jetmail.messaging.compose import NotCompliant
from jetmail.messaging.templates import TemplateStore
from jetmail.messaging.templating import TemplateVersion
from jetmail.storage import keys
from jetmail.storage.table import ConditionFailed
from jetmail.webhooks import DISABLED, WebhookSink, campaign_event

T = TypeVar("T")

logger = logging.getLogger("jetmail.campaigns")

CAMPAIGN_QUEUE = "email_campaign"
ERASED = "(erased)"
AB_QUEUE = "email_ab_test"
PLAN_TASK = "campaign_plan"
BATCH_TASK = "campaign_batch"
START_TASK = "campaign_start"
FIRE_TASK = "campaign_fire"

S = CampaignState


class CampaignQueue(Protocol):
    """What campaign actions need from the job layer (implemented by ``jetmail.queue.SyncClient``): jobs, the
    native schedule of a recurring campaign, and the connected queue itself for the KV state board."""

    def enqueue(self, task: str, *, queue: str, priority: str = ..., job_id: str | None = ...,
                **kwargs: Any) -> Any: ...

    def enqueue_at(self, when: datetime, task: str, *, queue: str, priority: str = ...,
                   job_id: str | None = ..., **kwargs: Any) -> Any: ...

    def cancel(self, job_id: str) -> bool: ...

    def schedule(self, task: str, *, queue: str, schedule_id: str, cron: str | None = ...,
                 timezone: str | None = ..., **kwargs: Any) -> Any: ...

    def pause_schedule(self, schedule_id: str) -> Any: ...

    def resume_schedule(self, schedule_id: str) -> Any: ...

    def cancel_schedule(self, schedule_id: str) -> bool: ...

    def run(self, operation: Callable[[Any], Awaitable[T]]) -> T: ...


class ListLookup(Protocol):
    """The mailing lists an audience names (``jetmail.audience.contacts.ContactStore``); LookupError for an
    unknown one."""

    def get_list(self, list_id: str) -> object: ...


class SegmentLookup(Protocol):
    """The segments an audience names (``jetmail.audience.segments.SegmentStore``); LookupError for an unknown one."""

    def get(self, segment_id: str) -> object: ...


class SenderRules(Protocol):
    """The bulk-sender rules (``jetmail.messaging.compose.Composer``): an allowed From identity, and an unsubscribe link
    and the postal address in every template version."""

    def check_from(self, from_header: str | None) -> None: ...

    def require_compliant(self, versions: Iterable[TemplateVersion],
                          context: dict[str, Any] | None = None) -> None: ...


class SuppressionLookup(Protocol):
    """Which addresses were erased at their owner's request
    (``jetmail.deliverability.suppressions.SuppressionStore``)."""

    def erased_among(self, emails: Iterable[str]) -> set[str]: ...


class AuditTrail(Protocol):
    """Where each campaign action is recorded (``jetmail.compliance.audit.AuditLog``)."""

    def record(self, action: str, *, target: str, changes: dict[str, Any] | None = None) -> object: ...


class UnknownAudience(LookupError):
    pass


class VariantNotFound(LookupError):
    pass


def z_test(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the two-proportion z-test (pooled); 1.0 when there is nothing to compare."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / spread
    return math.erfc(abs(z) / math.sqrt(2))


def next_run_at(item: dict[str, Any], *, now: datetime | None = None) -> str | None:
    """When a scheduled campaign starts next: its time, or its cron's next firing in its time zone; None
    when nothing is due (paused, sending, finished)."""
    if item.get("state") != S.SCHEDULED:
        return None
    if not item.get("cron"):
        return item.get("scheduled_at")
    from jetmail.queue.patterns import cron_next  # the job layer loads here, not in every API cold start

    try:  # by the server's own cron rules, so what it fires and what we show agree
        fires = cron_next(item["cron"], now or datetime.now(UTC), timezone=item.get("timezone") or "UTC")
    except ValueError as exc:  # a cron stored before validation followed the server's grammar
        logger.warning("campaign %s: cannot compute the next firing of %r: %s", item.get("id"), item["cron"], exc)
        return None
    return fires.isoformat() if fires else None


class CampaignService:
    def __init__(self, *, store: CampaignStore, templates: TemplateStore, queue: CampaignQueue, lists: ListLookup,
                 segments: SegmentLookup, sender_rules: SenderRules, audit: AuditTrail,
                 suppressions: SuppressionLookup, webhooks: WebhookSink = DISABLED) -> None:
        self.store = store
        self.webhooks = webhooks  # campaign.started / paused / finished
        self.templates = templates
        self.queue = queue
        self.lists = lists
        self.segments = segments
        self.sender_rules = sender_rules
        self.audit = audit
        self.suppressions = suppressions  # to keep erased addresses out of the failures listing

    # ---- create and read
    def create(self, body: CampaignCreate, *, parent_id: str | None = None, campaign_id: str | None = None,
               state: CampaignState = S.DRAFT) -> CampaignPublic:
        self.templates.resolve(body.template, None)  # TemplateNotFound → 404
        if body.ab_test:
            for variant in body.ab_test.variants:
                if variant.template:
                    self.templates.resolve(variant.template, None)
        for source in [*body.audience, *body.exclusions]:
            self._check_source(source)
        self.sender_rules.check_from(body.from_)
        item = self.store.create(campaign_id or f"cmp_{secrets.token_hex(8)}", body, parent_id=parent_id,
                                 state=state)
        return self.public(item)

    def _check_source(self, source: AudienceSource) -> None:
        try:
            if source.list_id is not None:
                self.lists.get_list(source.list_id)
            if source.segment_id is not None:
                self.segments.get(source.segment_id)
        except LookupError as exc:
            raise UnknownAudience(f"{source.label}: {exc}") from None

    def get(self, campaign_id: str) -> CampaignPublic:
        return self.public(self.store.get(campaign_id))

    def list(self) -> list[CampaignPublic]:
        return [self.public(i) for i in self.store.list()]

    def failures(self, campaign_id: str, *, limit: int = 100, cursor: str | None = None) -> CampaignFailurePage:
        """The recipients the campaign failed for good, with reasons, ``limit`` at a time.
        Raises CampaignNotFound, InvalidCursor."""
        self.store.get(campaign_id, consistent=False)
        page = self.store.failures(campaign_id, limit=limit, cursor=cursor)
        # an address erased at its owner's request stays on the batch item until it expires; not shown
        erased = self.suppressions.erased_among(f.email for f in page.failures)
        for failure in page.failures:
            if failure.email.lower() in erased:
                failure.email = ERASED
        return page

    def public(self, item: dict[str, Any]) -> CampaignPublic:
        definition = self.store.definition(item)
        total, sent, failed, skipped = (int(item.get(k, 0)) for k in ("total", "sent", "failed", "skipped"))
        progress = Progress(total=total, sent=sent, failed=failed, skipped=skipped,
                            queued=max(total - sent - failed - skipped, 0))
        ab = ABResult.model_validate_json(item["ab"]) if item.get("ab") else None
        if ab is not None:
            ab.variants = self._variant_stats(item["id"], definition)
        return CampaignPublic(
            id=item["id"], name=item["name"], state=item["state"], template=definition.template,
            subject=definition.subject, from_=definition.from_, audience=definition.audience,
            exclusions=definition.exclusions, created_at=item["created_at"], started_at=item.get("started_at"),
            finished_at=item.get("finished_at"), scheduled_at=item.get("scheduled_at"), cron=item.get("cron"),
            timezone=item.get("timezone"), parent_id=item.get("parent_id"), progress=progress,
            ab_test=definition.ab_test, ab=ab, next_run_at=next_run_at(item), archive=definition.archive,
        )

    def update(self, campaign_id: str, body: CampaignUpdate) -> CampaignPublic:
        """Change what may change in any state: whether the campaign shows in its lists' public archives,
        and the values its archived copy renders with. Raises CampaignNotFound."""
        item = self.store.get(campaign_id)
        changes = body.model_dump(exclude_unset=True)
        definition = self.store.definition(item).model_copy(update=changes)
        item = self.store.set_fields(campaign_id, definition=definition.model_dump_json(by_alias=True),
                                     updated_at=now_iso())
        self._record("updated", campaign_id, **{k: v for k, v in changes.items() if k != "archive_context"})
        return self.public(item)

    def _variant_stats(self, campaign_id: str, definition: CampaignCreate) -> builtins.list[VariantStats]:
        assert definition.ab_test is not None
        counters = self.store.variant_counters(campaign_id)
        metric = "opened" if definition.ab_test.metric == "open_rate" else "clicked"
        stats = []
        for variant in definition.ab_test.variants:
            c = counters.get(variant.name, {})
            sent, opened, clicked = int(c.get("sent", 0)), int(c.get("opened", 0)), int(c.get("clicked", 0))
            hits = opened if metric == "opened" else clicked
            stats.append(VariantStats(name=variant.name, sent=sent, opened=opened, clicked=clicked,
                                      rate=hits / sent if sent else 0.0))
        return stats

    # ---- bulk-sender rules
    def check_compliance(self, definition: CampaignCreate) -> None:
        """Every locale of every template the campaign may use (its own and each A/B variant's) must
        render an unsubscribe link and the postal address, and the From address must be allowed.
        Raises NotCompliant (naming each template/locale and what it lacks), SenderNotAllowed."""
        self.sender_rules.check_from(definition.from_)
        # each (template, subject) a send may use: the campaign's, and each A/B variant's, whose unset fields
        # fall back to the campaign's as the sender's do
        uses = [(definition.template, definition.subject)]
        if definition.ab_test:
            uses += [(v.template or definition.template, v.subject or definition.subject)
                     for v in definition.ab_test.variants]
        versions = []
        for name, subject in dict.fromkeys(uses):
            for locale in sorted(self.templates.locales(name)):
                # a campaign is marketing mail whatever its template's category says (the renamed
                # copy keeps the renderer's cache of the stored version apart)
                version = self.templates.get(name, locale=locale)
                versions.append(version.model_copy(update={"category": "marketing", "name": f"{name}~campaign",
                                                           **({"subject": subject} if subject else {})}))
        self.sender_rules.require_compliant(versions, definition.context)

    def _record(self, action: str, campaign_id: str, **changes: Any) -> None:
        self.audit.record(f"campaign.{action}", target=campaign_id, changes=changes)

    # ---- actions
    def send(self, campaign_id: str) -> CampaignPublic:
        """Start now (from draft or scheduled)."""
        self.check_compliance(self.store.definition(self.store.get(campaign_id)))
        item = self.store.transition(campaign_id, S.SENDING, allowed_from={S.DRAFT, S.SCHEDULED},
                                     fields={"started_at": now_iso()})
        self.store.clear_due(campaign_id)
        self._mirror(campaign_id, S.SENDING)
        definition = self.store.definition(item)
        if definition.ab_test is not None:
            decide_at = datetime.now(UTC) + definition.ab_test.test_duration
            ab = ABResult(metric=definition.ab_test.metric, decide_at=decide_at.isoformat())
            item = self.store.set_fields(campaign_id, ab=ab.model_dump_json())
            self._enqueue_plan(campaign_id, "test")
        else:
            self._enqueue_plan(campaign_id, "main")
        self._record("sent", campaign_id, state=S.SENDING.value, template=definition.template,
                     ab_test=definition.ab_test is not None)
        self.webhooks.emit([campaign_event("campaign.started", campaign_id, cause="start", at=item.get("started_at"))])
        return self.public(item)

    def _enqueue_plan(self, campaign_id: str, run: str, *, winner: str | None = None) -> None:
        self.queue.enqueue(PLAN_TASK, queue=AB_QUEUE if run == "test" else CAMPAIGN_QUEUE, priority="high",
                           job_id=f"plan.{campaign_id}.{run}", campaign_id=campaign_id, run=run, winner=winner)

    def schedule(self, campaign_id: str, request: ScheduleRequest) -> CampaignPublic:
        """Start at a time, or recur on a cron. Scheduling again moves the campaign: the earlier start (or
        the earlier cron) is replaced, never kept beside the new one. A paused recurring campaign takes
        the new cron or time zone and stays paused."""
        current = self.store.get(campaign_id)
        self.check_compliance(self.store.definition(current))
        if request.at is not None:
            item = self._schedule_once(campaign_id, current, request)
        else:
            item = self._schedule_cron(campaign_id, current, request)
        self._record("scheduled", campaign_id, at=item.get("scheduled_at"), cron=request.cron,
                     timezone=request.timezone)
        return self.public(item)

    def _schedule_once(self, campaign_id: str, current: dict[str, Any], request: ScheduleRequest) -> dict[str, Any]:
        assert request.at is not None
        if current.get("cron"):
            raise InvalidTransition(f"campaign {campaign_id} recurs on a cron: give it a new cron, pause it or "
                                    "cancel it")
        at = request.at.astimezone(UTC)
        # a fresh job id per scheduling: an id used before (A -> B -> A) would be de-duplicated away
        job_id = f"start.{campaign_id}.{int(at.timestamp())}.{secrets.token_hex(4)}"
        item = self.store.transition(campaign_id, S.SCHEDULED, allowed_from={S.DRAFT, S.SCHEDULED},
                                     fields={"scheduled_at": at.isoformat(), "timezone": request.timezone,
                                             "start_job": job_id})
        self.store.mark_due(campaign_id, at)  # replaces the earlier due time the tick would act on
        # the native schedule starts it on time; the scheduler tick is the safety net; the
        # conditional state change makes whichever comes second a no-op
        self.queue.enqueue_at(at, START_TASK, queue=CAMPAIGN_QUEUE, priority="high", job_id=job_id,
                              campaign_id=campaign_id, at=at.isoformat())
        if current.get("start_job") and current["start_job"] != job_id:
            # moved: the earlier start must not fire (and if it already has, start_due sees it is stale)
            self.queue.cancel(current["start_job"])
        self._mirror(campaign_id, S.SCHEDULED)
        return item

    def _schedule_cron(self, campaign_id: str, current: dict[str, Any], request: ScheduleRequest) -> dict[str, Any]:
        assert request.cron is not None
        recurring = bool(current.get("cron"))
        # a paused recurring campaign keeps its pause: the new cron applies when it is resumed
        target = S.PAUSED if recurring and current["state"] == S.PAUSED else S.SCHEDULED
        allowed = {S.PAUSED} if target == S.PAUSED else ({S.SCHEDULED} if recurring else {S.DRAFT, S.SCHEDULED})
        item = self.store.transition(campaign_id, target, allowed_from=allowed,
                                     fields={"cron": request.cron, "timezone": request.timezone},
                                     remove=("scheduled_at", "start_job"))
        if current.get("start_job"):  # it was scheduled once: that start is replaced by the cron
            self.queue.cancel(current["start_job"])
            self.store.clear_due(campaign_id)
        # publishing to the same schedule subject replaces the server's schedule; a paused one stays paused
        try:
            self.queue.schedule(FIRE_TASK, queue=CAMPAIGN_QUEUE, schedule_id=f"cmp-{campaign_id}",
                                cron=request.cron, timezone=request.timezone, campaign_id=campaign_id)
        except Exception:
            # not published (NATS unreachable): put the campaign back as it was rather than leave it half-changed
            kept = ("cron", "timezone", "scheduled_at", "start_job")
            self.store.transition(campaign_id, S(current["state"]), allowed_from={target},
                                  fields={k: current[k] for k in kept if k in current},
                                  remove=tuple(k for k in kept if k not in current))
            raise
        self._mirror(campaign_id, target)
        return item

    def fire(self, campaign_id: str, *, stamp: str) -> CampaignPublic | None:
        """One firing of a recurring campaign: a child run with its own id, started at once."""
        parent = self.store.get(campaign_id)
        if parent["state"] != S.SCHEDULED or not parent.get("cron"):
            return None
        child_id = f"{campaign_id}-{stamp}"
        try:
            self.store.create(child_id, self.store.definition(parent), parent_id=campaign_id)
        except ConditionFailed:  # the child exists: this firing was handled already
            return self.get(child_id)
        return self.send(child_id)

    def start_due(self, campaign_id: str, *, at: str | None = None) -> CampaignPublic | None:
        """Start a scheduled campaign whose time has come. ``at``: the time the start job was made for;
        a job for a time the campaign was since moved from is stale and starts nothing."""
        if at is not None:
            item = self.store.get(campaign_id)
            if item.get("scheduled_at") != at:
                logger.info("campaign %s: start for %s ignored, it was moved to %s", campaign_id, at,
                            item.get("scheduled_at"))
                return None
        try:
            return self.send(campaign_id)
        except InvalidTransition:
            self.store.clear_due(campaign_id)
            return None
        except NotCompliant as exc:
            # its template changed since it was scheduled: it stays scheduled, unsent, until fixed
            logger.warning("scheduled campaign %s not started: %s", campaign_id, exc)
            self.store.clear_due(campaign_id)
            return None

    def pause(self, campaign_id: str) -> CampaignPublic:
        """Pause a sending campaign (its batches park), or a recurring one (it stops firing until resumed;
        a run already started is a campaign of its own and is paused by its own id)."""
        current = self.store.get(campaign_id)
        if current.get("cron") and current["state"] == S.SCHEDULED:
            item = self.store.transition(campaign_id, S.PAUSED, allowed_from={S.SCHEDULED})
            self.queue.pause_schedule(f"cmp-{campaign_id}")
        else:
            item = self.store.transition(campaign_id, S.PAUSED, allowed_from={S.SENDING})
        self._mirror(campaign_id, S.PAUSED)
        self._record("paused", campaign_id, state=S.PAUSED.value)
        self.webhooks.emit([campaign_event("campaign.paused", campaign_id, cause=item.get("updated_at") or now_iso())])
        return self.public(item)

    def resume(self, campaign_id: str) -> CampaignPublic:
        current = self.store.get(campaign_id)
        if current.get("cron") and current["state"] == S.PAUSED:
            item = self.store.transition(campaign_id, S.SCHEDULED, allowed_from={S.PAUSED})
            self.queue.resume_schedule(f"cmp-{campaign_id}")
            self._mirror(campaign_id, S.SCHEDULED)
            self._record("resumed", campaign_id, state=S.SCHEDULED.value)
            return self.public(item)
        item = self.store.transition(campaign_id, S.SENDING, allowed_from={S.PAUSED})
        self._mirror(campaign_id, S.SENDING)
        requeued = self.requeue_parked(campaign_id)
        self._record("resumed", campaign_id, state=S.SENDING.value, requeued_batches=requeued)
        return self.public(item)

    def requeue_parked(self, campaign_id: str) -> int:
        count = 0
        for parked in self.store.parked(campaign_id):
            payload = json.loads(parked["payload"])
            self.queue.enqueue(BATCH_TASK, queue=CAMPAIGN_QUEUE, priority="normal",
                               job_id=f"cmpb.{campaign_id}.{payload['run']}.{payload['batch']}.{parked['park_id']}",
                               **payload)
            self.store.unpark(campaign_id, parked["sk"])
            count += 1
        return count

    def cancel(self, campaign_id: str) -> CampaignPublic:
        item = self.store.transition(campaign_id, S.CANCELLED,
                                     allowed_from={S.DRAFT, S.SCHEDULED, S.SENDING, S.PAUSED},
                                     fields={"finished_at": now_iso()})
        self._mirror(campaign_id, S.CANCELLED)
        self.store.clear_due(campaign_id)
        if item.get("start_job"):
            self.queue.cancel(item["start_job"])
        if item.get("cron"):
            self.queue.cancel_schedule(f"cmp-{campaign_id}")
        for parked in self.store.parked(campaign_id):
            self.store.unpark(campaign_id, parked["sk"])
        self._record("cancelled", campaign_id, state=S.CANCELLED.value)
        return self.public(item)

    def pick_winner(self, campaign_id: str, variant: str, *, decided_by: str = "manual",
                    p_value: float | None = None, confidence: float | None = None) -> CampaignPublic:
        item = self.store.get(campaign_id)
        definition = self.store.definition(item)
        if definition.ab_test is None:
            raise VariantNotFound(f"campaign {campaign_id} has no A/B test")
        if variant not in {v.name for v in definition.ab_test.variants}:
            raise VariantNotFound(f"campaign {campaign_id} has no variant {variant!r}")
        ab = ABResult.model_validate_json(item["ab"]) if item.get("ab") else ABResult(metric=definition.ab_test.metric)
        if ab.state == "decided":
            raise InvalidTransition(f"the winner of {campaign_id} is already {ab.winner}")
        if item["state"] not in (S.SENDING, S.PAUSED):
            raise InvalidTransition(f"campaign {campaign_id} is {item['state']}")
        ab = ab.model_copy(update={"state": "decided", "winner": variant, "decided_by": decided_by,
                                   "p_value": p_value, "confidence": confidence, "variants": []})
        try:
            self.store.table.update(
                *keys.campaign(campaign_id),
                expression="SET ab = :ab, ab_winner = :v, runs_expected = list_append(runs_expected, :w)",
                params={":ab": ab.model_dump_json(), ":v": variant, ":w": ["winner"]},
                condition="attribute_not_exists(ab_winner)",
            )
        except ConditionFailed:
            raise InvalidTransition(f"the winner of {campaign_id} was picked concurrently") from None
        self._enqueue_plan(campaign_id, "winner", winner=variant)
        return self.get(campaign_id)

    def evaluate_ab(self, campaign_id: str, now: datetime) -> str | None:
        """Decide an A/B test whose duration is over; returns what happened (for logs and tests)."""
        item = self.store.get(campaign_id)
        if not item.get("ab") or item["state"] != S.SENDING:
            return None
        ab = ABResult.model_validate_json(item["ab"])
        if ab.state != "testing" or ab.decide_at is None or datetime.fromisoformat(ab.decide_at) > now:
            return None
        definition = self.store.definition(item)
        assert definition.ab_test is not None
        stats = sorted(self._variant_stats(campaign_id, definition), key=lambda v: v.rate, reverse=True)
        best, runner_up = stats[0], stats[1]
        opens = definition.ab_test.metric == "open_rate"
        p_value = z_test(best.opened if opens else best.clicked, best.sent,
                         runner_up.opened if opens else runner_up.clicked, runner_up.sent)
        confidence = 1 - p_value
        if best.rate > runner_up.rate and p_value < 1 - definition.ab_test.confidence:
            self.pick_winner(campaign_id, best.name, decided_by="test", p_value=p_value, confidence=confidence)
            return f"winner {best.name}"
        fallback = definition.ab_test.fallback
        if fallback == "manual":
            waiting = ab.model_copy(update={"state": "waiting", "p_value": p_value, "confidence": confidence,
                                            "variants": []})
            self.store.set_fields(campaign_id, ab=waiting.model_dump_json())
            return "waiting for a manual pick"
        chosen = best.name if fallback == "send_best" else definition.ab_test.variants[0].name
        self.pick_winner(campaign_id, chosen, decided_by="fallback", p_value=p_value, confidence=confidence)
        return f"fallback {chosen}"

    def finish_if_done(self, campaign_id: str) -> bool:
        item = self.store.get(campaign_id)
        if item["state"] != S.SENDING:
            return False
        expected = set(item.get("runs_expected", []))
        if not expected or not expected.issubset(set(item.get("runs_planned", []))):
            return False
        if int(item.get("batches_done", 0)) < int(item.get("batches_planned", 0)):
            return False
        if item.get("ab") and ABResult.model_validate_json(item["ab"]).state != "decided":
            return False
        try:
            finished = self.store.transition(campaign_id, S.SENT, allowed_from={S.SENDING},
                                             fields={"finished_at": now_iso()})
        except InvalidTransition:
            return False
        self._mirror(campaign_id, S.SENT)
        self.webhooks.emit([campaign_event("campaign.finished", campaign_id, cause="finish",
                                           at=finished.get("finished_at"), sent=finished.get("sent"))])
        return True

    def _mirror(self, campaign_id: str, state: CampaignState) -> None:
        self.queue.run(lambda q: publish_state(q.js, campaign_id, state.value))


__all__ = ["CampaignNotFound", "CampaignService", "InvalidTransition", "UnknownAudience", "VariantNotFound", "z_test"]
