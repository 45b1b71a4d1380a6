"""Pure pieces of the job layer: names, patterns, backoff, envelopes and the registry (no server needed)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone

import nats.js.errors
import pytest
from pydantic import BaseModel

from jetmail.queue import (
    Backoff,
    JobEnvelope,
    JobValidationError,
    PermanentFailure,
    Queue,
    QueueConfig,
    Registry,
    Retry,
)
from jetmail.queue.client import placed
from jetmail.queue.patterns import at_pattern, cron_pattern, every_pattern
from jetmail.queue.subjects import check_job_id, check_queue, delayed_subject, job_token
from jetmail.queue.worker import DeadOnArrival, decide


def test_queue_names_are_validated() -> None:
    assert check_queue("email_campaign") == "email_campaign"
    for bad in ("Email", "a.b", "a-b", "", "a b", "x" * 65):
        with pytest.raises(ValueError, match="invalid queue name"):
            check_queue(bad)


def test_job_ids_become_safe_subject_tokens() -> None:
    assert job_token("welcome-42_a") == "welcome-42_a"
    hashed = job_token("campaign:7/contact 9@x.com")
    assert hashed.startswith("h-") and len(hashed) == 42
    # a kept id can never collide with another id's hash
    assert job_token(hashed) != hashed
    assert delayed_subject("a.b") == f"sched.at.{job_token('a.b')}"
    with pytest.raises(ValueError):
        check_job_id("line\nbreak")


def test_cron_accepts_five_or_six_fields() -> None:
    assert cron_pattern("*/5 * * * *") == "0 */5 * * * *"
    assert cron_pattern("*/2 * * * * *") == "*/2 * * * * *"
    assert cron_pattern("@hourly") == "@hourly"
    for bad in ("* * *", "61 * * * * *", "not a cron", "* * * * * * *"):
        with pytest.raises(ValueError, match="cron"):
            cron_pattern(bad)


def test_every_accepts_seconds_timedeltas_and_durations() -> None:
    assert every_pattern(5) == "5s"
    assert every_pattern(1.5) == "1500ms"
    assert every_pattern(timedelta(minutes=5)) == "300s"
    assert every_pattern("5m") == "5m"
    assert every_pattern("1h30m") == "1h30m"
    for bad in (0, 0.5, "500ms", "5 minutes", "", "-1s"):
        with pytest.raises(ValueError, match="interval"):
            every_pattern(bad)


def test_at_pattern_is_utc_with_milliseconds() -> None:
    when = datetime(2030, 1, 2, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert at_pattern(when) == "@at 2030-01-02T08:00:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        at_pattern(datetime(2030, 1, 1))


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    plain = Backoff(base=1, max=10, jitter=0)
    assert [plain.delay(a) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    jittered = Backoff(base=1, max=100, jitter=0.2)
    delays = [jittered.delay(3, rng=rng) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in delays) and len(set(delays)) > 1


def test_outcomes_are_decided_in_one_place() -> None:
    envelope = JobEnvelope(job_id="j", task="t", queue="q", max_retries=2, backoff=Backoff(base=1, jitter=0))
    assert decide(None, attempt=1, envelope=envelope).kind == "ack"
    assert decide(RuntimeError("x"), attempt=1, envelope=envelope).delay == 1
    assert decide(RuntimeError("x"), attempt=2, envelope=envelope).delay == 2
    last = decide(RuntimeError("boom"), attempt=3, envelope=envelope)
    assert (last.kind, last.reason, last.error) == ("dead", "retries_exhausted", "RuntimeError: boom")
    assert decide(Retry(delay=7), attempt=1, envelope=envelope).delay == 7
    assert decide(Retry(delay=7), attempt=3, envelope=envelope).kind == "dead"
    assert decide(PermanentFailure("no"), attempt=1, envelope=envelope).reason == "permanent_failure"
    assert decide(DeadOnArrival("unknown_task", "?"), attempt=1, envelope=None).reason == "unknown_task"


class Greeting(BaseModel):
    name: str
    times: int = 1


def test_envelope_validates_payload_against_registered_model() -> None:
    reg = Registry()

    @reg.task("greet", model=Greeting)
    async def greet(job: Greeting, ctx: object) -> None:
        return None

    q = Queue(QueueConfig(nats_url="nats://127.0.0.1:1"), registry=reg)
    envelope = q.envelope("greet", queue="q", kwargs={"name": "Ada"})
    assert envelope.payload == {"name": "Ada", "times": 1}
    assert q.envelope("greet", queue="q", payload=Greeting(name="Bo", times=2)).payload["times"] == 2
    with pytest.raises(JobValidationError, match="name: Field required"):
        q.envelope("greet", queue="q", kwargs={"times": 2})
    with pytest.raises(JobValidationError) as info:
        q.envelope("greet", queue="q", kwargs={"name": "x", "times": "secret-value"})
    assert "secret-value" not in str(info.value)
    # unregistered tasks take any JSON-able payload
    assert q.envelope("other", queue="q", kwargs={"at": datetime(2030, 1, 1, tzinfo=UTC)}).payload == {
        "at": "2030-01-01T00:00:00Z"}
    with pytest.raises(JobValidationError, match="not JSON"):
        q.envelope("other", queue="q", kwargs={"x": object()})
    with pytest.raises(TypeError, match="not both"):
        q.envelope("greet", queue="q", payload={"name": "a"}, kwargs={"name": "b"})


def test_registry_rejects_a_second_handler_for_a_name() -> None:
    reg = Registry()
    reg.register("a", lambda job, ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", print)
    with pytest.raises(ValueError, match="invalid task name"):
        reg.register("bad name", print)


def no_peers() -> nats.js.errors.APIError:
    """What a JetStream cluster answers when it cannot place a stream's replicas (a node restarting)."""
    return nats.js.errors.APIError(code=500, err_code=10005,
                                   description="no suitable peers for placement, peer offline")


def test_making_a_stream_waits_while_the_cluster_cannot_place_its_replicas() -> None:
    answers: list[Exception | str] = [no_peers(), no_peers(), "made"]

    async def make() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    # a placement failure is tried again; the stream is made once the cluster can place it
    assert asyncio.run(placed(make, patience=5)) == "made"
    assert answers == []


def test_making_a_stream_gives_up_after_its_patience_and_on_any_other_error() -> None:
    async def never() -> None:
        raise no_peers()

    async def refused() -> None:
        raise nats.js.errors.APIError(code=400, err_code=10058, description="stream name already in use")

    with pytest.raises(nats.js.errors.APIError) as placement:
        asyncio.run(placed(never, patience=0.5))
    assert placement.value.err_code == 10005
    with pytest.raises(nats.js.errors.APIError) as other:
        asyncio.run(placed(refused, patience=5))
    assert other.value.err_code == 10058
