"""The campaign tasks the workers run: plan, batch, start (scheduled) and fire (recurring)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
from typing import Any

from pydantic import BaseModel, Field

from jetmail.campaigns.model import CampaignState
from jetmail.campaigns.planner import PlannedBatch, Planner
from jetmail.campaigns.sender import BatchJob, Parked
from jetmail.campaigns.service import AB_QUEUE, BATCH_TASK, CAMPAIGN_QUEUE, FIRE_TASK, PLAN_TASK, START_TASK
from jetmail.campaigns.signals import Lease, LeaseHeld, lease_key
from jetmail.campaigns.store import BatchRecord
from jetmail.deliverability.stops import plan_start
from jetmail.messaging.providers import TemporaryDeliveryError
from jetmail.queue import JobContext, Retry, task
from jetmail.storage.table import ConditionFailed
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


class CampaignRef(BaseModel):
    campaign_id: str = Field(min_length=1, max_length=80)
    # start jobs: the time they were made for, so a start the campaign was moved away from does nothing
    at: str | None = Field(default=None, max_length=40)


@task(PLAN_TASK, model=PlanJob)
async def campaign_plan(job: PlanJob, ctx: JobContext) -> None:
    # one execution of a run's plan at a time: a second one (a duplicate trigger) would number batches
    # against a half-recorded first. A holder that still refreshes the lease is alive and finishes its own
    # work; one that stopped (an earlier attempt whose release was lost in a leader election) is waited out
    leases = worker_services(ctx).batch_sender.leases
    try:
        lease = await leases.take_over(lease_key(job.campaign_id, job.run, "plan"),
                                       holder=f"plan|{ctx.job_id}|{ctx.attempt}", beat=ctx.heartbeat)
    except LeaseHeld as exc:
        logger.info("campaign %s run %s: %s; leaving the plan to it", job.campaign_id, job.run, exc)
        return
    keeper = asyncio.create_task(leases.keep(lease, beat=ctx.heartbeat))
    try:
        await _plan(job, ctx, lease=lease)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await leases.release(lease)


async def _plan(job: PlanJob, ctx: JobContext, *, lease: Lease) -> None:
    worker = worker_services(ctx)
    services, queue = worker.services, worker.queue
    store = services.campaign_store
    item = await asyncio.to_thread(store.get, job.campaign_id)
    if item["state"] not in (CampaignState.SENDING, CampaignState.PAUSED) or job.run in item.get("runs_planned", []):
        return
    definition = store.definition(item)
    # before the planner reads the suppression list: its batches replay every stop event from here on
    stops_from = plan_start()
    planner = Planner(contacts=services.contacts, segments=services.segments,
                      suppressions=services.suppressions.for_plan())
    variants = {v.name: v for v in definition.ab_test.variants} if definition.ab_test else {}
    target_queue = AB_QUEUE if job.run == "test" else CAMPAIGN_QUEUE
    total = count = 0
    # an execution after a crash: the batches an earlier one recorded go out again as they were (their job
    # ids de-duplicate; lease and journal make a later repeat harmless) and nobody in them is planned again
    recorded = store.recorded_batches(job.campaign_id, run=job.run)
    while (page := await asyncio.to_thread(next, recorded, None)) is not None:
        planner.already_planned((r.email for b in page for r in b.recipients), last_batch=max(b.number for b in page))
        await _enqueue(queue, job, page, variants=variants, target_queue=target_queue)
        total += sum(len(b.recipients) for b in page)
        count += len(page)
        await ctx.heartbeat()
    batches = planner.batches(definition, run=job.run, winner=job.winner)
    size = FIRST_CHUNK
    while True:
        chunk: list[PlannedBatch] = await asyncio.to_thread(list, itertools.islice(batches, size))
        if not chunk:
            break
        size = min(size * 2, PUBLISH_CHUNK)
        records = [BatchRecord(number=b.number, variant=b.variant, recipients=b.recipients, priority=b.priority,
                               stops_from=stops_from) for b in chunk]
        if not lease.valid:
            raise Retry(delay=float(lease.ttl))  # another execution may take over: record nothing more
        # the batch items first: a message id must resolve to its recipient before the mail goes out
        await asyncio.to_thread(store.record_batches, job.campaign_id, run=job.run, batches=records)
        await _enqueue(queue, job, records, variants=variants, target_queue=target_queue)
        total += sum(len(b.recipients) for b in chunk)
        count += len(chunk)
        await ctx.heartbeat()
    try:
        await asyncio.to_thread(store.plan_finished, job.campaign_id, run=job.run, total=total, batches=count)
    except ConditionFailed:
        pass  # a previous attempt recorded this run already
    logger.info("campaign %s run %s planned: %d recipients in %d batches (%d suppressed)", job.campaign_id,
                job.run, total, count, planner.excluded_suppressed)
    await asyncio.to_thread(services.campaigns.finish_if_done, job.campaign_id)


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
