"""The delivery log's storage shape on the local stack's DynamoDB: a job's attempts packed in one log row, an
event row per event holding its first attempt, later attempts indexed under their message; what the log
pages, the replays and the message timeline read from them."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from jetmail.storage import keys
from jetmail.storage.table import Table, key_values
from jetmail.webhooks.deliveries import LOG_ROW_BYTES, DeliveryAttempt, DeliveryLog
from jetmail.webhooks.events import WebhookEvent, event_id


def _events(tag: str, n: int) -> list[WebhookEvent]:
    now = datetime.now(UTC)
    return [WebhookEvent(id=event_id("message.sent", tag, i), type="message.sent", timestamp=now,
                         data={"message_id": f"msg_{tag}{i}", "to": f"log-{i}-{tag}@example.com"})
            for i in range(n)]


def _attempt(endpoint_id: str, event: WebhookEvent, *, attempt: int = 1, at: datetime | None = None,
             outcome: str = "succeeded", response: str = "ok", replay: bool = False) -> DeliveryAttempt:
    return DeliveryAttempt.model_validate({
        "endpoint_id": endpoint_id, "event_id": event.id, "event_type": event.type,
        "message_id": event.data.get("message_id"), "attempt": attempt, "outcome": outcome,
        "status_code": 200 if outcome == "succeeded" else 500, "latency_ms": 12, "response": response,
        "at": (at or datetime.now(UTC)).isoformat(), "replay": replay})


def _all(log: DeliveryLog, endpoint_id: str, *, limit: int, **bounds: datetime) -> list[DeliveryAttempt]:
    found: list[DeliveryAttempt] = []
    start = None
    for _ in range(1000):
        page, start = log.attempts(endpoint_id, limit=limit, start=start, **bounds)
        assert len(page) <= limit
        found += page
        if start is None:
            return found
        cursor = key_values(start)  # what an API cursor carries
        assert set(cursor) == {"pk", "sk"} and all(isinstance(v, str) for v in cursor.values())
    raise AssertionError("the pages never ended")


def test_a_jobs_attempts_take_one_row_per_event_and_one_for_the_job(table: Table) -> None:
    # GIVEN a delivery job of 100 events, each delivered at its first attempt
    endpoint_id = "whe_log" + secrets.token_hex(4)
    log = DeliveryLog(table)
    events = _events(endpoint_id, 100)
    attempts = [_attempt(endpoint_id, e) for e in events]
    # WHEN the job logs them THEN 101 rows go in 5 BatchWriteItems (an event row each and the job's log row)
    assert log.record(endpoint_id, attempts, keep=events) == 5
    # AND the log pages through every attempt newest first, a page boundary falling inside the job's row
    paged = _all(log, endpoint_id, limit=30)
    assert [a.event_id for a in paged] == [a.event_id for a in reversed(attempts)]
    assert paged[0] == attempts[-1]
    # AND every event is kept for a replay, and each message's timeline shows its attempt
    assert {e.id for e in log.events(endpoint_id, [e.id for e in events])} == {e.id for e in events}
    assert log.of_message(str(events[7].data["message_id"])) == [attempts[7]]


def test_retries_and_replays_reach_the_log_the_timeline_and_time_ranges(table: Table) -> None:
    # GIVEN an event that failed, was retried alone, then replayed, and another job's event a minute later
    endpoint_id = "whe_log" + secrets.token_hex(4)
    log = DeliveryLog(table)
    first, later = _events(endpoint_id, 2)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    failed = _attempt(endpoint_id, first, at=t0, outcome="failed", response="down")
    retried = _attempt(endpoint_id, first, attempt=2, at=t0 + timedelta(seconds=5))
    other = _attempt(endpoint_id, later, at=t0 + timedelta(minutes=1))
    replayed = _attempt(endpoint_id, first, at=t0 + timedelta(minutes=2), replay=True)
    log.record(endpoint_id, [failed], keep=[first])
    log.record(endpoint_id, [retried])
    log.record(endpoint_id, [other], keep=[later])
    log.record(endpoint_id, [replayed])
    # THEN the log holds all four, newest first, one a page as well as all at once
    assert _all(log, endpoint_id, limit=1) == [replayed, other, retried, failed]
    assert _all(log, endpoint_id, limit=100) == [replayed, other, retried, failed]
    # AND a time range reads only the attempts made in it (what a replay of a range sends again)
    ranged = _all(log, endpoint_id, limit=1, since=t0 + timedelta(seconds=1), until=t0 + timedelta(seconds=90))
    assert ranged == [other, retried]
    # AND the message's timeline shows each attempt at its event, oldest first, and the event stays replayable
    assert log.of_message(str(first.data["message_id"])) == [failed, retried, replayed]
    assert log.events(endpoint_id, [first.id, "evt_unknown"]) == [first]


def test_a_job_whose_answers_pass_a_rows_size_spreads_over_rows(table: Table) -> None:
    # GIVEN a job of 100 events whose receiver answered each with a 4 KB excerpt (400 KB in all)
    endpoint_id = "whe_log" + secrets.token_hex(4)
    log = DeliveryLog(table)
    events = _events(endpoint_id, 100)
    attempts = [_attempt(endpoint_id, e, response=f"{n:04d}" + "x" * 4092) for n, e in enumerate(events)]
    assert sum(len(a.model_dump_json()) for a in attempts) > LOG_ROW_BYTES
    # WHEN it is logged THEN every attempt reads back whole, in order, across the rows it took
    log.record(endpoint_id, attempts, keep=events)
    rows, _ = table.query(pk=keys.webhook_partition(endpoint_id), sk_prefix=keys.WEBHOOK_ATTEMPT_PREFIX)
    assert len(rows) == 2
    assert _all(log, endpoint_id, limit=40) == attempts[::-1]


def test_attempt_rows_of_the_older_shape_are_still_read(table: Table) -> None:
    # GIVEN an attempt logged the way it was before jobs packed their attempts: a row each, indexed itself
    endpoint_id = "whe_log" + secrets.token_hex(4)
    log = DeliveryLog(table)
    (event,) = _events(endpoint_id, 1)
    old = _attempt(endpoint_id, event, at=datetime.now(UTC) - timedelta(minutes=1))
    table.put(keys.webhook_attempt(endpoint_id, old.at, old.event_id, old.attempt).item(
        gsi1pk=keys.webhook_message(str(old.message_id)), gsi1sk=old.at, **old.model_dump()))
    table.put(keys.webhook_event(endpoint_id, event.id).item(event=event.model_dump_json()))
    # WHEN a newer attempt is logged the new way
    new = _attempt(endpoint_id, event, replay=True)
    log.record(endpoint_id, [new])
    # THEN the log, the timeline and a replay read both shapes
    assert _all(log, endpoint_id, limit=1) == [new, old]
    assert log.of_message(str(event.data["message_id"])) == [old, new]
    assert log.events(endpoint_id, [event.id]) == [event]
