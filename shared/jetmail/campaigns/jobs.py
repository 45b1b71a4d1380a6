"""The campaign tasks the workers run: plan, batch, start (scheduled) and fire (recurring)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import secrets
from typing import Any

from pydantic import BaseModel, Field

from jetmail.audience.model import AddressRange
from jetmail.campaigns.model import CampaignState
from jetmail.campaigns.planner import PlannedBatch, Planner, split_point
from jetmail.campaigns.sender import BatchJob, Parked
from jetmail.campaigns.service import AB_QUEUE, BATCH_TASK, CAMPAIGN_QUEUE, FIRE_TASK, PLAN_TASK, START_TASK
from jetmail.campaigns.signals import Lease, LeaseHeld, lease_key
from jetmail.campaigns.store import ROOT_PART, BatchRecord, PlanPart
from jetmail.deliverability.stops import plan_start
from jetmail.messaging.providers import TemporaryDeliveryError
from jetmail.queue import JobContext, Retry, task
from jetmail.worker_services import worker_services

logger = logging.getLogger("jetmail.campaigns")
PUBLISH_CHUNK = 50  # batches per enqueue_many: bounded memory whatever the audience size
# the first chunk is one batch, published as soon as its recipients are known; chunks then double up
# to PUBLISH_CHUNK, so the first mail leaves after one small read and large plans still write in bulk
FIRST_CHUNK = 1


class PlanJob(BaseModel):
    campaign_id: str = Field(min_length=1, max_length=80)
    run: str = Field(pattern=r"^(main|test|winner)$")
    winner: str | None = None
    # the part of the run's plan this job plans (``root``: the job the campaign enqueued, which records
    # itself); a part's range and budget are read from its record, never from the payload
    part: str = Field(default=ROOT_PART, pattern=r"^[a-z0-9]{1,32}$")


class CampaignRef(BaseModel):
    campaign_id: str = Field(min_length=1, max_length=80)
    # start jobs: the time they were made for, so a start the campaign was moved away from does nothing
    at: str | None = Field(default=None, max_length=40)


@task(PLAN_TASK, model=PlanJob)
async def campaign_plan(job: PlanJob, ctx: JobContext) -> None:
    # one execution of a plan part at a time: a second one (a duplicate trigger) would plan against a
    # half-recorded first. A holder that still refreshes the lease is alive and finishes its own work; one
    # that stopped (an earlier attempt whose release was lost in a leader election) is waited out
    leases = worker_services(ctx).batch_sender.leases
    name = "plan" if job.part == ROOT_PART else f"plan-{job.part}"
    try:
        lease = await leases.take_over(lease_key(job.campaign_id, job.run, name),
                                       holder=f"plan|{ctx.job_id}|{ctx.attempt}", beat=ctx.heartbeat)
    except LeaseHeld as exc:
        logger.info("campaign %s run %s part %s: %s; leaving the plan to it", job.campaign_id, job.run, job.part,
                    exc)
        return
    keeper = asyncio.create_task(leases.keep(lease, beat=ctx.heartbeat))
    try:
        await _plan(job, ctx, lease=lease)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await leases.release(lease)


async def _plan(job: PlanJob, ctx: JobContext, *, lease: Lease) -> None:
    """Plan one part of a run: the members whose address is in the part's range. A part that has planned
    ``campaign_plan_split_after`` recipients and may still hand parts over records a new part for the top
    half of the rest of its range, enqueues its job and plans on below it; so a large audience is planned
    by up to ``campaign_plan_parts`` jobs at once, a small one by one."""
    worker = worker_services(ctx)
    services, queue = worker.services, worker.queue
    settings = services.settings
    store = services.campaign_store
    item = await asyncio.to_thread(store.get, job.campaign_id)
    if item["state"] not in (CampaignState.SENDING, CampaignState.PAUSED) or job.run in item.get("runs_planned", []):
        return
    definition = store.definition(item)
    if job.part == ROOT_PART:
        await asyncio.to_thread(store.open_plan_part, job.campaign_id, run=job.run, part=PlanPart(
            id=ROOT_PART, lo="", hi=None, budget=settings.campaign_plan_parts - 1))
    parts = await asyncio.to_thread(store.plan_parts, job.campaign_id, run=job.run)
    me = next((p for p in parts if p.id == job.part), None)
    if me is None:
        logger.warning("campaign %s run %s: no plan part %s recorded; nothing to plan", job.campaign_id, job.run,
                       job.part)
        return
    # the parts it handed over already (an earlier execution's): below the lowest of them, with what is left
    children = [p for p in parts if p.parent == me.id]
    within = AddressRange(me.lo, min([c.lo for c in children], default=me.hi))
    budget = me.budget - sum(1 + c.budget for c in children)
    for child in children:  # enqueued again: the execution that recorded one may have stopped before
        await _enqueue_part(queue, job, child)
    # before the planner reads the suppression list: its batches replay every stop event from here on
    stops_from = plan_start()
    planner = Planner(contacts=services.contacts, segments=services.segments,
                      suppressions=services.suppressions.for_plan(), within=within)
    variants = {v.name: v for v in definition.ab_test.variants} if definition.ab_test else {}
    target_queue = AB_QUEUE if job.run == "test" else CAMPAIGN_QUEUE
    total = count = 0
    numbered = 0
    # an execution after a crash: the batches an earlier one recorded go out again as they were (their job
    # ids de-duplicate; lease and journal make a later repeat harmless) and nobody in them is planned again.
    # The root reads them always: batches recorded before plans had parts are its own
    again = await asyncio.to_thread(store.start_plan_part, job.campaign_id, run=job.run, part=me.id)
    if again or me.id == ROOT_PART:
        recorded = store.recorded_batches(job.campaign_id, run=job.run)
        while (page := await asyncio.to_thread(next, recorded, None)) is not None:
            mine = [b for b in page if b.recipients and b.recipients[0].email.lower() in within]
            numbered = max([numbered, *(b.number for b in page)])
            if not mine:
                continue
            planner.already_planned((r.email for b in mine for r in b.recipients), last_batch=0)
            await _enqueue(queue, job, mine, variants=variants, target_queue=target_queue)
            total += sum(len(b.recipients) for b in mine)
            count += len(mine)
            await ctx.heartbeat()
    splittable = budget > 0 and await asyncio.to_thread(_rangeable, services, definition)
    since_split = 0
    batches = planner.batches(definition, run=job.run, winner=job.winner)
    size = FIRST_CHUNK
    while True:
        chunk: list[PlannedBatch] = await asyncio.to_thread(list, itertools.islice(batches, size))
        if not chunk:
            break
        size = min(size * 2, PUBLISH_CHUNK)
        if not lease.valid:
            raise Retry(delay=float(lease.ttl))  # another execution may take over: record nothing more
        # numbers unique across the run's parts, reserved before anything is recorded under them
        first = await asyncio.to_thread(store.number_batches, job.campaign_id, run=job.run, count=len(chunk),
                                        after=numbered)
        numbered = 0
        records = [BatchRecord(number=first + n, variant=b.variant, recipients=b.recipients, priority=b.priority,
                               stops_from=stops_from) for n, b in enumerate(chunk)]
        # the batch items first: a message id must resolve to its recipient before the mail goes out
        await asyncio.to_thread(store.record_batches, job.campaign_id, run=job.run, batches=records)
        await _enqueue(queue, job, records, variants=variants, target_queue=target_queue)
        planned = sum(len(b.recipients) for b in chunk)
        total += planned
        count += len(chunk)
        since_split += planned
        await ctx.heartbeat()
        if splittable and budget > 0 and since_split >= settings.campaign_plan_split_after:
            since_split = 0
            point = split_point(planner.last_planned, within.hi)
            if point is None:
                continue
            given = (budget - 1) // 2
            child = PlanPart(id=_part_id(point, within.hi), lo=point, hi=within.hi, parent=me.id, budget=given)
            await asyncio.to_thread(store.open_plan_part, job.campaign_id, run=job.run, part=child)
            budget -= 1 + given
            within.hi = point  # from the next Query on, this part reads below the new one
            await _enqueue_part(queue, job, child)
            logger.info("campaign %s run %s: part %s hands addresses from %r to part %s", job.campaign_id,
                        job.run, me.id, point, child.id)
    planned_whole = await asyncio.to_thread(store.finish_plan_part, job.campaign_id, run=job.run, part=me.id,
                                            total=total, batches=count)
    logger.info("campaign %s run %s part %s planned: %d recipients in %d batches (%d suppressed)%s",
                job.campaign_id, job.run, me.id, total, count, planner.excluded_suppressed,
                "; the run is planned" if planned_whole else "")
    if planned_whole:
        await asyncio.to_thread(services.campaigns.finish_if_done, job.campaign_id)


def _rangeable(services: Any, definition: Any) -> bool:
    """Whether every audience source is read by address range (lists, and segments of lists): only then
    can a part hand the top of its range over without reading what it keeps. One GetItem per segment."""
    for source in definition.audience:
        if source.segment_id is not None and not services.segments.get(source.segment_id).list_ids:
            return False
    return True


def _part_id(lo: str, hi: str | None) -> str:
    return hashlib.sha256(f"{lo}\x00{hi or ''}".encode()).hexdigest()[:16]


async def _enqueue_part(queue: Any, job: PlanJob, part: PlanPart) -> None:
    await queue.enqueue(PLAN_TASK, queue=AB_QUEUE if job.run == "test" else CAMPAIGN_QUEUE, priority="high",
                        job_id=f"plan.{job.campaign_id}.{job.run}.{part.id}", campaign_id=job.campaign_id,
                        run=job.run, winner=job.winner, part=part.id)


async def _enqueue(queue: Any, job: PlanJob, batches: list[BatchRecord], *, variants: dict[str, Any],
                   target_queue: str) -> None:
    for priority, group in itertools.groupby(batches, key=lambda b: b.priority):
        immediate: list[BatchRecord] = []
        for batch in group:
            delay = variants[batch.variant].send_delay if batch.variant in variants else None
            if delay:
                await queue.enqueue_in(delay, BATCH_TASK, queue=target_queue, priority=priority,
                                       job_id=_batch_job_id(job, batch), payload=_batch_job(job, batch), max_retries=5)
            else:
                immediate.append(batch)
        if immediate:
            await queue.enqueue_many(BATCH_TASK, [_batch_job(job, b) for b in immediate], queue=target_queue,
                                     priority=priority, job_ids=[_batch_job_id(job, b) for b in immediate],
                                     max_retries=5)


def _batch_job_id(job: PlanJob, batch: BatchRecord) -> str:
    return f"cmpb.{job.campaign_id}.{job.run}.{batch.number}"


def _batch_job(job: PlanJob, batch: BatchRecord) -> BatchJob:
    return BatchJob(campaign_id=job.campaign_id, run=job.run, batch=batch.number, variant=batch.variant,
                    recipients=batch.recipients, stops_from=batch.stops_from)


@task(BATCH_TASK, model=BatchJob)
async def campaign_batch(job: BatchJob, ctx: JobContext) -> None:
    worker = worker_services(ctx)
    services = worker.services
    try:
        await worker.batch_sender.run(job, attempt=ctx.attempt, last_attempt=ctx.is_last_attempt,
                                      heartbeat=ctx.heartbeat)
    except Parked:
        store = services.campaign_store
        await asyncio.to_thread(store.park, job.campaign_id, run=job.run, batch=job.batch,
                                payload=job.model_dump(mode="json"), park_id=secrets.token_hex(6))
        # a resume between our pause check and the park above would miss this batch: look again
        current = await asyncio.to_thread(store.get, job.campaign_id)
        if current["state"] == CampaignState.SENDING:
            await asyncio.to_thread(services.campaigns.requeue_parked, job.campaign_id)
        return
    except TemporaryDeliveryError as exc:
        raise Retry(delay=exc.retry_after) from exc


@task(START_TASK, model=CampaignRef)
async def campaign_start(job: CampaignRef, ctx: JobContext) -> None:
    await asyncio.to_thread(worker_services(ctx).services.campaigns.start_due, job.campaign_id, at=job.at)


@task(FIRE_TASK, model=CampaignRef)
async def campaign_fire(job: CampaignRef, ctx: JobContext) -> None:
    stamp = re.sub(r"[^0-9A-Za-z]", "", ctx.job_id.rpartition("@")[2])[:20] or ctx.job_id[-12:]
    await asyncio.to_thread(worker_services(ctx).services.campaigns.fire, job.campaign_id, stamp=stamp)
