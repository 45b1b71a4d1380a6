"""The batch job: send up to ~100 campaign messages, then record them in one DynamoDB transaction.

The campaign wrapper around the one send pipeline (``jetmail.messaging.pipeline``): lease, journal, tally and
batch bookkeeping. Per batch: one KV create for the batch's lease (refreshed with the job's heartbeat, deleted
at the end), one stream-info request to read the batch's journal (and one consumer read when an earlier
attempt wrote to it), one TransactWriteItems (batch outcome and counters), one UpdateItem keeping the reasons
when some recipients failed for good, and one stream-info request to catch up on stop events. Per recipient: a
journal entry (pipelined publishes, one per turn of the event loop for the entries that came in together,
their acks awaited before the batch records its result) and the provider. Before every send the campaign's
state is looked up on the state board, which watches the KV state bucket, so pause and cancel take effect
within milliseconds even for batches already queued: a paused batch is parked (its payload kept in DynamoDB)
and re-enqueued on resume, where its journal skips whoever it had already mailed. Before every send the
suppression policy answers from the stop events the worker follows (``jetmail.deliverability.stops``): every
suppression, list unsubscribe and erasure since the campaign's plan began, however long ago and whenever this
worker started."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formataddr

from pydantic import BaseModel, Field

from jetmail.campaigns.ids import campaign_message_id
from jetmail.campaigns.model import (
    BatchCounts,
    BatchRecipient,
    CampaignCreate,
    CampaignState,
    RecipientOutcome,
    Variant,
)
from jetmail.campaigns.signals import Journal, Lease, LeaseHeld, Leases, StateBoard, lease_key
from jetmail.campaigns.store import CampaignStore
from jetmail.deliverability.policy import SuppressionPolicy
from jetmail.messaging.compose import Recipient
from jetmail.messaging.mime import parse_address
from jetmail.messaging.pipeline import Draft, SendPipeline, Sent
from jetmail.messaging.providers import PermanentDeliveryError, TemporaryDeliveryError
from jetmail.messaging.templates import TemplateNotFound, TemplateStore
from jetmail.messaging.templating import TemplateRenderError, TemplateVersion
from jetmail.webhooks import DISABLED, WebhookSink, campaign_sent_events

logger = logging.getLogger("jetmail.campaigns")

#: what differs between a campaign's recipients in its context: the rest is the campaign's own, the same for all
RECIPIENT_CONTEXT = frozenset({"attributes"})


class BatchJob(BaseModel):
    """A batch job's payload, validated when the worker reads it. Its recipients are in their compact
    form (``BatchRecipient``): one-letter keys, empty fields left out."""

    campaign_id: str = Field(min_length=1, max_length=80)
    run: str = Field(pattern=r"^[a-z0-9-]+$", max_length=40)
    batch: int = Field(ge=1)
    variant: str | None = None
    recipients: list[BatchRecipient] = Field(max_length=1000)
    # where the batch's replay of stop events starts (jetmail.deliverability.stops.plan_start): None replays them all
    stops_from: str | None = Field(default=None, max_length=40)


@dataclass
class BatchTally:
    results: list[RecipientOutcome] = field(default_factory=list)
    temporary: list[int] = field(default_factory=list)  # positions deferred by a temporary failure

    def add(self, outcome: RecipientOutcome) -> None:
        self.results.append(outcome)

    @property
    def counts(self) -> BatchCounts:
        statuses = Counter(r.status for r in self.results)
        return BatchCounts(sent=statuses["sent"], failed=statuses["failed"], skipped=statuses["skipped"])

    @property
    def failures(self) -> dict[int, str]:
        """Position -> reason of every recipient that failed for good."""
        return {r.position: r.reason or "unknown" for r in self.results if r.status == "failed"}


class Parked(Exception):
    """The campaign was paused: the batch was parked and will be re-enqueued on resume."""


class BatchSender:
    def __init__(self, *, store: CampaignStore, templates: TemplateStore, pipeline: SendPipeline,
                 policy: SuppressionPolicy, board: StateBoard, leases: Leases, journal: Journal, holder: str,
                 concurrency: int = 8, process_concurrency: int = 32, webhooks: WebhookSink = DISABLED) -> None:
        self.store = store
        self.webhooks = webhooks  # one emit per batch: its ``message.sent`` events in one job
        self.templates = templates
        self.pipeline = pipeline
        self.policy = policy
        self.board = board
        self.leases = leases
        self.journal = journal
        self.holder = holder  # names this process in the leases it takes
        self.concurrency = concurrency
        # sends in flight across every batch this process runs: rendering is CPU work on the event loop, and
        # more concurrent sends than the provider needs only make every await (a transactional message's
        # too) wait longer for its turn
        self.process_slots = asyncio.Semaphore(process_concurrency)
        self._definitions: dict[str, CampaignCreate] = {}
        self._versions: dict[tuple[str, str, str | None], asyncio.Future[TemplateVersion]] = {}
        self._contents: dict[tuple[str, str | None, str | None], TemplateVersion] = {}

    async def _definition(self, campaign_id: str) -> CampaignCreate:
        # a campaign's definition never changes once it sends: cache it for the life of the process
        if campaign_id not in self._definitions:
            item = await asyncio.to_thread(self.store.get, campaign_id, consistent=False)
            self._definitions[campaign_id] = self.store.definition(item)
        return self._definitions[campaign_id]

    async def _version(self, campaign_id: str, template: str, locale: str | None) -> TemplateVersion:
        # a campaign sends the template version it first resolved, whatever is saved meanwhile: one
        # read per (campaign, template, locale) per process, not one per recipient (nor one per batch
        # that starts before the first read has answered)
        key = (campaign_id, template, locale)
        reading = self._versions.get(key)
        if reading is None:
            reading = self._versions[key] = asyncio.ensure_future(
                asyncio.to_thread(self.templates.resolve, template, locale))
        try:
            return await asyncio.shield(reading)
        except Exception:
            if self._versions.get(key) is reading:
                del self._versions[key]  # not found yet, or the read failed: the next batch asks again
            raise

    async def _content(self, campaign_id: str, campaign: CampaignCreate, variant: Variant | None,
                       locale: str | None) -> TemplateVersion:
        """The version a recipient of this variant and locale gets, with the campaign's subject line: a copy
        of its own, named for the campaign, so that the renderer keeps its layouts as first compiled."""
        key = (campaign_id, variant.name if variant else None, locale)
        if key not in self._contents:
            template = (variant.template if variant and variant.template else None) or campaign.template
            version = await self._version(campaign_id, template, locale)
            subject = (variant.subject if variant and variant.subject else None) or campaign.subject
            label = f"{campaign_id}.{variant.name if variant else 'campaign'}"
            self._contents[key] = version.model_copy(update={"name": f"{version.name}~{label}",
                                                             **({"subject": subject} if subject else {})})
        return self._contents[key]

    async def state(self, campaign_id: str) -> str | None:
        if await self.board.marketing_stopped():
            return CampaignState.PAUSED  # the reputation monitor stopped marketing: park like a pause
        state = await self.board.state(campaign_id)
        if state is None:  # not mirrored yet (or the KV copy was lost): ask the source of truth
            state = (await asyncio.to_thread(self.store.get, campaign_id))["state"]
        return state

    async def run(self, job: BatchJob, *, attempt: int, last_attempt: bool,
                  heartbeat: Callable[[], Awaitable[None]] | None = None) -> BatchCounts:
        state = await self.state(job.campaign_id)
        if state == CampaignState.PAUSED:
            raise Parked
        campaign = await self._definition(job.campaign_id)
        variant = next((v for v in campaign.ab_test.variants if v.name == job.variant), None) \
            if campaign.ab_test and job.variant else None
        try:
            await self.policy.ready(job.stops_from)
        except TimeoutError as exc:
            raise TemporaryDeliveryError(f"stop events not caught up: {exc}") from exc
        try:
            lease = await self.leases.take(lease_key(job.campaign_id, job.run, job.batch),
                                           holder=f"{self.holder}|{attempt}|{secrets.token_hex(4)}")
        except LeaseHeld as exc:
            raise TemporaryDeliveryError(str(exc), retry_after=exc.retry_after) from exc
        keeper = asyncio.create_task(self.leases.keep(lease, beat=heartbeat))
        try:
            return await self._run_leased(job, lease, campaign, variant, last_attempt=last_attempt)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self.leases.release(lease)

    async def _run_leased(self, job: BatchJob, lease: Lease, campaign: CampaignCreate, variant: Variant | None,
                          *, last_attempt: bool) -> BatchCounts:
        # what earlier attempts of this batch did: reported as they journaled it, never sent again
        journaled = {pos: RecipientOutcome.model_validate(entry)
                     for pos, entry in (await self.journal.read(job.campaign_id, job.run, job.batch)).items()}
        writer = self.journal.writer(job.campaign_id, job.run, job.batch)
        tally = BatchTally()
        stop = asyncio.Event()
        lapsed = asyncio.Event()
        errors: list[Exception] = []
        sent: list[Sent] = []

        async def record(outcome: RecipientOutcome) -> None:
            await writer.append(outcome.model_dump())
            tally.add(outcome)

        async def one(pos: int, recipient: BatchRecipient) -> None:
            email = recipient.email
            done = journaled.get(pos)
            if done is not None and done.email.lower() == email.lower():
                tally.add(done)
                return
            async with self.process_slots:
                if stop.is_set() or lapsed.is_set() or errors:
                    return
                if not lease.valid:
                    # refreshes failing (or the batch taken over): start nothing the lease may not cover
                    lapsed.set()
                    return
                current = await self.state(job.campaign_id)
                if current == CampaignState.PAUSED:
                    stop.set()
                    return
                if current == CampaignState.CANCELLED:
                    tally.add(RecipientOutcome(position=pos, email=email, status="skipped", reason="cancelled"))
                    return
                refused = self.policy.now(email, category="marketing", list_id=recipient.list_id)
                if refused is not None:
                    await record(RecipientOutcome(position=pos, email=email, status="skipped", reason=refused))
                    return
                message_id = campaign_message_id(job.campaign_id, job.run, job.batch, pos)
                try:
                    provider_id = await self._send(campaign, variant, recipient, message_id, job.campaign_id, sent)
                except PermanentDeliveryError as exc:
                    reason = exc.reason
                    await self.pipeline.refused(exc, lane="marketing")  # a refused address is a bounce
                except TemporaryDeliveryError as exc:
                    if not last_attempt:
                        tally.temporary.append(pos)  # not journaled: the retry sends it
                        return
                    reason = f"gave up: {exc.reason}"
                except (TemplateNotFound, TemplateRenderError, ValueError) as exc:
                    reason = f"cannot render: {exc}"
                else:
                    await record(RecipientOutcome(position=pos, email=email, status="sent", provider_id=provider_id))
                    return
                # the journal keeps the reason too: a retry of the batch reports this failure from it
                await record(RecipientOutcome(position=pos, email=email, status="failed", reason=reason[:300]))

        async def guarded(pos: int, recipient: BatchRecipient) -> None:
            # one recipient's error (say NATS electing a leader) starts no further sends, but every send
            # already under way finishes and is journaled before the batch reports the error: a retry
            # while they were still in flight would not find them in the journal and mail them again
            try:
                await one(pos, recipient)
            except Exception as exc:  # re-raised below once the batch has settled
                errors.append(exc)

        # ``concurrency`` lanes take the recipients in turn: a handful of tasks per batch, not one per recipient
        queue = iter(enumerate(job.recipients))

        async def lane() -> None:
            for pos, recipient in queue:
                await guarded(pos, recipient)

        await asyncio.gather(*(lane() for _ in range(min(self.concurrency, len(job.recipients)))))
        # every outcome acked by the journal before anything else is decided or recorded
        await writer.flush()
        if errors:
            raise errors[0]
        if stop.is_set():
            raise Parked
        if lapsed.is_set():
            raise TemporaryDeliveryError(f"lease on batch {lease.key} lapsed; retrying the batch",
                                         retry_after=float(lease.ttl))
        if tally.temporary:
            raise TemporaryDeliveryError(f"{len(tally.temporary)} recipient(s) deferred; retrying the batch")
        counts = tally.counts
        recorded = await asyncio.to_thread(self.store.finish_batch, job.campaign_id, run=job.run, batch=job.batch,
                                           counts=counts, variant=job.variant, failures=tally.failures)
        if not recorded:
            logger.info("batch %s/%s/%s was already recorded", job.campaign_id, job.run, job.batch)
        # outcome hooks once the batch (and so each message) is recorded; a batch recorded before counts
        # nothing again towards reputation
        await self.pipeline.sent(sent, count=recorded)
        await asyncio.to_thread(self.webhooks.emit, campaign_sent_events(
            job.campaign_id, [(s.draft.message_id, s.draft.recipient.email) for s in sent], variant=job.variant))
        return counts

    async def _send(self, campaign: CampaignCreate, variant: Variant | None, recipient: BatchRecipient,
                    message_id: str, campaign_id: str, sent: list[Sent]) -> str | None:
        version = await self._content(campaign_id, campaign, variant, recipient.language)
        to = Recipient(email=recipient.email, name=recipient.name, language=recipient.language,
                       timezone=recipient.timezone)
        from_addr = campaign.from_ or self.pipeline.composer.settings.default_from
        if variant and variant.from_name:
            from_addr = formataddr((variant.from_name, parse_address(from_addr)[1]))
        tags = {"campaign_id": campaign_id}
        if variant:
            tags["variant"] = variant.name
        draft = Draft(message_id=message_id, recipient=to, version=version,
                      context={**campaign.context, "attributes": recipient.attributes}, from_addr=from_addr,
                      category="marketing", reply_to=campaign.reply_to, list_id=recipient.list_id, track=True,
                      tags=tags, lane="marketing", fixed_layouts=True, varying=RECIPIENT_CONTEXT)
        outcome = await self.pipeline.send(draft)
        sent.append(outcome)
        return outcome.result.provider_message_id

