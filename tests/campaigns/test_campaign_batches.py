"""A campaign batch's lease and journal, a re-executed plan, and the watched campaign state, on the real stack.

Batches run in this process through the worker's own startup (``jetmail.tasks.startup``), so a test can run
the same batch twice, or while someone else holds its lease, and read what the sender reports."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import nats
import pytest
from fastapi.testclient import TestClient
from nats.js.errors import KeyNotFoundError

from jetmail.campaigns.model import BatchCounts, BatchRecipient, RecipientOutcome
from jetmail.campaigns.planner import Planner
from jetmail.campaigns.sender import BatchJob
from jetmail.campaigns.signals import (
    JOURNAL_PREFIX,
    JOURNAL_STREAM,
    LEASES_BUCKET,
    Journal,
    LeaseHeld,
    Leases,
    StateBoard,
    journal_subject,
    lease_key,
    publish_state,
)
from jetmail.campaigns.store import BatchRecord
from jetmail.config import get_settings
from jetmail.deliverability.stops import plan_start
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from jetmail.messaging.providers import TemporaryDeliveryError
from jetmail.scheduler import tick
from jetmail.services import Services
from jetmail.worker_services import KEY, WorkerServices
from stacktools import Isolated

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("batches"))
    yield own
    own.close()


@pytest.fixture(scope="module")
def services(isolated: Isolated) -> Services:
    return isolated.services


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def in_worker(isolated: Isolated, step: Callable[[WorkerServices], Awaitable[Any]]) -> Any:
    """Run ``step(worker)`` with the services a worker makes at startup, from the stack's environment."""
    from jetmail.tasks import shutdown, startup

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in isolated.env.items() if k.startswith("JETMAIL_")})
    get_settings.cache_clear()

    async def main() -> Any:
        resources: dict[str, Any] = {}
        await startup(resources)
        try:
            return await step(resources[KEY])
        finally:
            await shutdown(resources)

    try:
        return asyncio.run(main())
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def run_batch(isolated: Isolated, job: BatchJob, *, attempt: int = 1) -> BatchCounts | Exception:
    async def step(worker: WorkerServices) -> BatchCounts | Exception:
        try:
            return await worker.batch_sender.run(job, attempt=attempt, last_attempt=False)
        except Exception as exc:
            return exc

    return in_worker(isolated, step)


def with_js(isolated: Isolated, step: Callable[[Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        nc = await nats.connect(isolated.settings.nats_url)
        try:
            return await step(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def draft_campaign(client: TestClient, name: str, list_id: str | None = None) -> str:
    audience = [{"list_id": list_id}] if list_id else [{"list_id": make_list(client, f"{name}-l", [])}]
    resp = client.post("/v1/campaigns", json={"name": name, "template": "getting_started", "context": CONTEXT,
                                              "audience": audience})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def make_list(client: TestClient, name: str, emails: list[str]) -> str:
    list_id = str(client.post("/v1/lists", json={"name": name}).json()["id"])
    if emails:
        body = "\n".join(json.dumps({"email": e}) for e in emails).encode()
        resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body)
        assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
    return list_id


def mailed(mailbox: Mailbox, domain: str) -> dict[str, int]:
    return {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}


def test_a_batch_run_again_mails_nobody_twice_and_reports_the_first_outcomes(
        isolated: Isolated, client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a batch of three good addresses, one the sink refuses with 550 and one suppressed
    domain = f"j{unique}.example.com"
    campaign_id = draft_campaign(client, f"journal-{unique}")
    good = [f"ok-{i}@{domain}" for i in range(3)]
    services.suppressions.add(f"gone@{domain}", reason="spam_complaint", source="test")
    recipients = [BatchRecipient(email=e) for e in [*good, f"reject-0@{domain}", f"gone@{domain}"]]
    job = BatchJob(campaign_id=campaign_id, run="main", batch=1, recipients=recipients)
    # WHEN it runs, and then runs again as a redelivery would
    first = run_batch(isolated, job)
    wait_until(lambda: set(mailed(mailbox, domain)) >= set(good), timeout=30, what="the good addresses mailed")
    again = run_batch(isolated, job, attempt=2)
    # THEN the second run reports what the first did, and mailed nobody
    assert first == BatchCounts(sent=3, failed=1, skipped=1), first
    assert again == first
    assert mailed(mailbox, domain) == dict.fromkeys(good, 1)
    # and the journal holds one entry per recipient, read back by position
    read = with_js(isolated, lambda js: Journal(js).read(campaign_id, "main", 1))
    entries = {p: RecipientOutcome.model_validate(e) for p, e in read.items()}
    assert {p: e.status for p, e in entries.items()} == {0: "sent", 1: "sent", 2: "sent", 3: "failed", 4: "skipped"}
    assert entries[3].reason is not None and "550" in entries[3].reason
    assert entries[4].reason is not None
    # and the campaign counted the batch once
    item = services.campaign_store.get(campaign_id)
    assert (item["sent"], item["failed"], item["skipped"], item["batches_done"]) == (3, 1, 1, 1)
    # with its mark an item of its own: the campaign item does not grow by a batch
    assert "done_batches" not in item


def test_a_batch_whose_recipients_were_all_skipped_is_counted_once(
        isolated: Isolated, client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a batch of two suppressed addresses
    domain = f"s{unique}.example.com"
    campaign_id = draft_campaign(client, f"skipped-{unique}")
    gone = [f"gone-{i}@{domain}" for i in range(2)]
    for address in gone:
        services.suppressions.add(address, reason="hard_bounce", source="test")
    job = BatchJob(campaign_id=campaign_id, run="main", batch=1, recipients=[BatchRecipient(email=e) for e in gone])
    # WHEN it runs, and then runs again as a redelivery would
    first = run_batch(isolated, job)
    again = run_batch(isolated, job, attempt=2)
    # THEN both runs report the two skipped, nobody was mailed, and the campaign counted the batch once
    assert first == again == BatchCounts(sent=0, failed=0, skipped=2), (first, again)
    assert mailed(mailbox, domain) == {}
    item = services.campaign_store.get(campaign_id)
    assert (item["sent"], item["skipped"], item["batches_done"]) == (0, 2, 1)


def test_a_batch_job_written_with_one_letter_keys_validates_and_goes_out_as_it_came() -> None:
    # GIVEN a batch job's payload as the plan wrote it before the payload models (a job still in flight)
    written = {"campaign_id": "cmp_1", "run": "main", "batch": 3, "variant": None, "stops_from": "1745830000.1",
               "recipients": [{"e": "ann@example.com", "n": "Ann", "l": "de", "t": "Europe/Berlin",
                               "a": {"plan": "pro"}, "s": "lst_0123456789abcdef"},
                              {"e": "bob@example.com", "s": "lst_0123456789abcdef"}]}
    # WHEN a worker reads it
    job = BatchJob.model_validate_json(json.dumps(written))
    # THEN its recipients have their readable names, and a dump (as the job layer makes) is the same payload
    ann, bob = job.recipients
    assert (ann.email, ann.name, ann.language, ann.timezone, ann.attributes, ann.list_id) == (
        "ann@example.com", "Ann", "de", "Europe/Berlin", {"plan": "pro"}, "lst_0123456789abcdef")
    assert (bob.name, bob.attributes) == (None, {})
    assert job.model_dump(mode="json") == written
    assert json.loads(job.model_dump_json()) == written


def test_a_journal_entry_written_with_one_letter_keys_validates() -> None:
    # GIVEN journal entries as batches wrote them before the models: a send without a provider id among them
    sent = {"p": 0, "e": "ann@example.com", "s": "sent", "m": None}
    failed = {"p": 1, "e": "bob@example.com", "s": "failed", "r": "550 5.1.1 unknown"}
    # WHEN they are read back
    outcomes = [RecipientOutcome.model_validate(e) for e in (sent, failed)]
    # THEN they have their readable names, and the entry written now leaves the empty field out
    assert [(o.position, o.status, o.reason, o.provider_id) for o in outcomes] == [
        (0, "sent", None, None), (1, "failed", "550 5.1.1 unknown", None)]
    assert [o.model_dump() for o in outcomes] == [{"p": 0, "e": "ann@example.com", "s": "sent"}, failed]


def test_a_batch_whose_lease_is_live_is_not_sent_until_the_lease_expires(
        isolated: Isolated, client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a batch whose lease another worker holds (and, like a worker that died, no longer refreshes)
    domain = f"l{unique}.example.com"
    campaign_id = draft_campaign(client, f"lease-{unique}")
    job = BatchJob(campaign_id=campaign_id, run="main", batch=7, recipients=[BatchRecipient(email=f"one@{domain}")])
    key = lease_key(campaign_id, "main", 7)

    async def hold(js: Any) -> None:
        await Leases(js, ttl=3).take(key, holder="another-worker")

    with_js(isolated, hold)
    # WHEN this worker takes the batch
    refused = run_batch(isolated, job)
    # THEN it sends nothing and asks to be retried once the lease could have expired
    assert isinstance(refused, TemporaryDeliveryError) and isinstance(refused.__cause__, LeaseHeld), refused
    assert refused.retry_after is not None and refused.retry_after > 0
    assert mailed(mailbox, domain) == {}

    # AND once the holder's lease expired (nobody refreshed it), the batch goes out, once
    async def expired(js: Any) -> bool:
        try:
            await (await js.key_value(LEASES_BUCKET)).get(key)
        except KeyNotFoundError:
            return True
        return False

    wait_until(lambda: with_js(isolated, expired), timeout=30, what="the lease expired")
    assert run_batch(isolated, job, attempt=2) == BatchCounts(sent=1)
    wait_until(lambda: mailed(mailbox, domain) == {f"one@{domain}": 1}, timeout=30, what="the batch mailed")


def test_a_plan_executed_again_after_membership_changed_mails_nobody_twice(
        isolated: Isolated, client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a 250-contact list and a plan execution that recorded its first two batches and then crashed
    domain = f"r{unique}.example.com"
    first = [f"m{i:03d}@{domain}" for i in range(250)]
    list_id = make_list(client, f"replan-{unique}", first)
    campaign_id = draft_campaign(client, f"replan-{unique}", list_id)
    definition = services.campaign_store.definition(services.campaign_store.get(campaign_id))
    planner = Planner(contacts=services.contacts, segments=services.segments, suppressions=services.suppressions)
    planned = list(planner.batches(definition, run="main"))[:2]
    stops_from = plan_start()
    services.campaign_store.record_batches(campaign_id, run="main", batches=[
        BatchRecord(number=b.number, variant=b.variant, recipients=b.recipients, priority=b.priority,
                    stops_from=stops_from) for b in planned])
    recorded = {r.email for b in planned for r in b.recipients}
    # WHEN members join (sorting before everyone, so a fresh plan would put them in batch 1) and the plan runs
    joined = [f"a{i:03d}@{domain}" for i in range(50)]
    body = "\n".join(json.dumps({"email": e}) for e in joined).encode()
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body).status_code == 200
    isolated.start_worker()
    assert client.post(f"/v1/campaigns/{campaign_id}/send").json()["state"] == "sending"
    everyone = set(first) | set(joined)
    wait_until(lambda: set(mailed(mailbox, domain)) >= everyone, timeout=120, what="everyone mailed")

    def done() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(done, timeout=120, what="campaign sent")
    # THEN everyone was mailed exactly once, the recorded batches unchanged and new ones numbered after them
    assert mailed(mailbox, domain) == dict.fromkeys(everyone, 1)
    for batch in planned:
        item = services.campaign_store.batch(campaign_id, run="main", batch=batch.number)
        assert item is not None and item["recipients"] == [r.email for r in batch.recipients]
    later = services.campaign_store.batch(campaign_id, run="main", batch=3)
    assert later is not None and not recorded & set(later["recipients"])
    progress = client.get(f"/v1/campaigns/{campaign_id}").json()["progress"]
    assert progress["total"] == len(everyone) and progress["sent"] == len(everyone)


def test_the_state_board_sees_a_pause_through_its_watch(isolated: Isolated, unique: str) -> None:
    async def step(js: Any) -> float:
        # GIVEN a board whose fallback reads would keep a value for an hour
        board = StateBoard(js, ttl=3600)
        campaign_id = f"cmp_watch{unique}"
        await publish_state(js, campaign_id, "sending")
        try:
            deadline = time.monotonic() + 10
            while await board.state(campaign_id) != "sending":
                assert time.monotonic() < deadline, "the board never saw the campaign"
                await asyncio.sleep(0.01)
            # WHEN the campaign is paused
            paused_at = time.monotonic()
            await publish_state(js, campaign_id, "paused")
            # THEN the board answers "paused" within a fraction of a second, without reading the key
            while await board.state(campaign_id) != "paused":
                assert time.monotonic() - paused_at < 5, "the pause never reached the board"
                await asyncio.sleep(0.001)
            return time.monotonic() - paused_at
        finally:
            await board.close()

    assert with_js(isolated, step) < 1.0


def test_the_journal_stream_keeps_entries_as_long_as_the_leases_bucket(isolated: Isolated) -> None:
    async def step(js: Any) -> Any:
        return (await js.stream_info(JOURNAL_STREAM)).config

    config = with_js(isolated, step)
    assert config.max_age >= 30 * 24 * 3600 and str(getattr(config.storage, "value", config.storage)) == "file"
    assert config.subjects == [f"{JOURNAL_PREFIX}.>"]
    assert journal_subject("cmp_1", "main", 2) == f"{JOURNAL_PREFIX}.cmp_1.main.2"


def test_outcomes_of_one_turn_are_journaled_as_one_message_and_read_back_by_position(
        isolated: Isolated, unique: str) -> None:
    campaign_id = f"cmp_turn{unique}"
    prefix = journal_subject(campaign_id, "main", 1)

    async def step(js: Any) -> Any:
        journal = Journal(js)
        writer = journal.writer(campaign_id, "main", 1)
        # GIVEN three sends answered in the same turn of the event loop, then one on its own
        await asyncio.gather(*(writer.append({"p": p, "e": f"r{p}@turn.example.com", "s": "sent", "m": f"id-{p}"})
                               for p in (0, 1, 2)))
        await writer.append({"p": 3, "e": "r3@turn.example.com", "s": "failed", "r": "550 5.1.1 no such user"})
        await writer.flush()
        info = await js.stream_info(JOURNAL_STREAM, subjects_filter=f"{prefix}.*")
        alone = await js.get_last_msg(JOURNAL_STREAM, f"{prefix}.3")
        return info.state.subjects, json.loads(alone.data), await journal.read(campaign_id, "main", 1)

    subjects, alone, read = with_js(isolated, step)
    # THEN the three are one message under the first one's position, the lone one an entry as before
    assert subjects == {f"{prefix}.0": 1, f"{prefix}.3": 1}
    assert alone == {"p": 3, "e": "r3@turn.example.com", "s": "failed", "r": "550 5.1.1 no such user"}
    # and reading the journal gives every position its own outcome
    assert {p: (e["s"], e.get("m")) for p, e in read.items()} == {
        0: ("sent", "id-0"), 1: ("sent", "id-1"), 2: ("sent", "id-2"), 3: ("failed", None)}


def test_entries_that_joined_a_cancelled_publisher_are_published_by_flush(isolated: Isolated, unique: str) -> None:
    campaign_id = f"cmp_cancel{unique}"

    async def step(js: Any) -> Any:
        journal = Journal(js)
        writer = journal.writer(campaign_id, "main", 1)
        # GIVEN an outcome that opened this turn's message, and a second one that joined it
        opener = asyncio.create_task(writer.append({"p": 0, "e": "a@cancel.example.com", "s": "sent"}))
        await asyncio.sleep(0)
        await writer.append({"p": 1, "e": "b@cancel.example.com", "s": "sent"})
        # WHEN the opener is cancelled before it publishes, and the batch then flushes its journal
        opener.cancel()
        await asyncio.gather(opener, return_exceptions=True)
        await writer.flush()
        return opener.cancelled(), await journal.read(campaign_id, "main", 1)

    cancelled, read = with_js(isolated, step)
    # THEN both outcomes are in the journal
    assert cancelled
    assert sorted(read) == [0, 1]


def test_a_journal_message_published_again_is_kept_once(isolated: Isolated, unique: str) -> None:
    campaign_id = f"cmp_again{unique}"
    prefix = journal_subject(campaign_id, "main", 1)

    async def step(js: Any) -> Any:
        journal = Journal(js)
        writer = journal.writer(campaign_id, "main", 1)
        # GIVEN two outcomes journaled as one message
        await asyncio.gather(*(writer.append({"p": p, "e": f"r{p}@again.example.com", "s": "sent"}) for p in (0, 1)))
        await writer.flush()
        stored = await js.get_last_msg(JOURNAL_STREAM, f"{prefix}.0")
        # WHEN the same message is published again, as flush does when its ack did not come back
        await journal.publish(f"{prefix}.0", stored.data)
        info = await js.stream_info(JOURNAL_STREAM, subjects_filter=f"{prefix}.*")
        return info.state.subjects, await journal.read(campaign_id, "main", 1)

    subjects, read = with_js(isolated, step)
    # THEN the stream holds it once, and each position reads back once
    assert subjects == {f"{prefix}.0": 1}
    assert sorted(read) == [0, 1]


def test_a_released_lease_lets_the_next_attempt_in_at_once(isolated: Isolated, unique: str) -> None:
    async def step(js: Any) -> None:
        leases = Leases(js, ttl=30)
        key = lease_key(f"cmp_rel{unique}", "main", 1)
        lease = await leases.take(key, holder="first")
        with pytest.raises(LeaseHeld):
            await leases.take(key, holder="second", patience=0)
        await leases.refresh(lease)
        await leases.release(lease)
        again = await leases.take(key, holder="second")
        # the first holder's refresh now finds the lease someone else's
        await leases.refresh(lease)
        assert lease.lost and not lease.valid and again.valid

    with_js(isolated, step)


async def _no_beat() -> None:
    return None


def test_a_lease_its_holder_stopped_refreshing_is_taken_over_once_it_expires(isolated: Isolated,
                                                                              unique: str) -> None:
    async def step(js: Any) -> tuple[str, str]:
        # GIVEN a plan lease left by an execution that ended without its release landing
        key = lease_key(f"cmp_stale{unique}", "main", "plan")
        await Leases(js, ttl=3).take(key, holder="plan|ended|1")
        # WHEN the next execution asks for it
        lease = await Leases(js, ttl=30).take_over(key, holder="plan|next|2", beat=_no_beat)
        # THEN it waited the stale lease out and holds it now
        entry = await (await js.key_value(LEASES_BUCKET)).get(key)
        return lease.holder, (entry.value or b"").decode()

    assert with_js(isolated, step) == ("plan|next|2", "plan|next|2")


def test_a_lease_whose_holder_refreshes_it_is_not_taken_over(isolated: Isolated, unique: str) -> None:
    async def step(js: Any) -> str:
        # GIVEN a plan lease whose holder is alive and refreshing it
        leases = Leases(js, ttl=3)
        key = lease_key(f"cmp_live{unique}", "main", "plan")
        held = await leases.take(key, holder="plan|alive|1")
        keeper = asyncio.create_task(leases.keep(held))
        try:
            # WHEN another execution asks for it
            with pytest.raises(LeaseHeld) as refused:
                await Leases(js, ttl=3).take_over(key, holder="plan|other|1", beat=_no_beat)
            # THEN it is refused, and the holder keeps the lease
            assert held.valid and not held.lost
            return str(refused.value)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    assert "plan|alive|1" in with_js(isolated, step)


def test_a_plan_whose_earlier_attempt_left_its_lease_behind_still_sends_the_campaign(
        isolated: Isolated, client: TestClient, services: Services, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a campaign whose plan lease an earlier attempt of the plan job left behind (its release lost)
    domain = f"s{unique}.example.com"
    everyone = [f"m{i:03d}@{domain}" for i in range(150)]
    campaign_id = draft_campaign(client, f"stale-plan-{unique}", make_list(client, f"stale-{unique}", everyone))

    async def hold(js: Any) -> None:
        await Leases(js, ttl=3).take(lease_key(campaign_id, "main", "plan"),
                                     holder=f"plan|plan.{campaign_id}.main|1")

    with_js(isolated, hold)
    if isolated.worker is None or isolated.worker.poll() is not None:
        isolated.start_worker()
    # WHEN the campaign is sent
    assert client.post(f"/v1/campaigns/{campaign_id}/send").json()["state"] == "sending"

    # THEN the plan runs once the stale lease expires, and everyone is mailed once
    def done() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(done, timeout=120, what="campaign sent")
    assert mailed(mailbox, domain) == dict.fromkeys(everyone, 1)
