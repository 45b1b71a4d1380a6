"""Names on the wire: subjects, consumer names and the checks that keep them valid NATS tokens."""

from __future__ import annotations

import hashlib
import re
from typing import Literal, get_args

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

JOB_PREFIX = "jobs"
SCHEDULE_PREFIX = "sched"
DLQ_PREFIX = "dlq"
JS_API = "$JS.API"

_QUEUE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_TASK_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SCHEDULE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SAFE_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_JOB_ID = 512


def check_queue(name: str) -> str:
    if not isinstance(name, str) or not _QUEUE_RE.match(name):
        raise ValueError(f"invalid queue name {name!r}: use 1-64 characters from [a-z0-9_]")
    return name


def check_priority(priority: str) -> Priority:
    if priority not in PRIORITIES:
        raise ValueError(f"invalid priority {priority!r}: use one of {', '.join(PRIORITIES)}")
    return priority


def check_task_name(name: str) -> str:
    if not isinstance(name, str) or not _TASK_RE.match(name):
        raise ValueError(f"invalid task name {name!r}: use 1-128 characters from [A-Za-z0-9_.:-]")
    return name


def check_job_id(job_id: str) -> str:
    # it travels in a header, so line breaks and other control characters would corrupt the message
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID or not job_id.isprintable():
        raise ValueError(f"invalid job id {job_id!r}: use 1-{MAX_JOB_ID} printable characters")
    return job_id


def check_schedule_id(schedule_id: str) -> str:
    if not isinstance(schedule_id, str) or not _SCHEDULE_ID_RE.match(schedule_id):
        raise ValueError(f"invalid schedule id {schedule_id!r}: use 1-128 characters from [A-Za-z0-9_-]")
    return schedule_id


def job_subject(queue: str, priority: str) -> str:
    return f"{JOB_PREFIX}.{queue}.{priority}"


def consumer_name(queue: str, priority: str) -> str:
    return f"{queue}_{priority}"


def dlq_subject(queue: str) -> str:
    return f"{DLQ_PREFIX}.{queue}"


def job_token(job_id: str) -> str:
    """A subject token standing for ``job_id``: the id itself when it is already a safe token, else a hash.

    Safe ids starting with ``h-`` are hashed too, so a kept id can never equal another id's hash.
    """
    if _SAFE_TOKEN_RE.match(job_id) and not job_id.startswith("h-"):
        return job_id
    return "h-" + hashlib.sha256(job_id.encode()).hexdigest()[:40]


def delayed_subject(job_id: str) -> str:
    return f"{SCHEDULE_PREFIX}.at.{job_token(job_id)}"


def recurring_subject(schedule_id: str) -> str:
    return f"{SCHEDULE_PREFIX}.recurring.{schedule_id}"

# headers the server understands
HDR_MSG_ID = "Nats-Msg-Id"
HDR_SCHEDULE = "Nats-Schedule"
HDR_SCHEDULE_TARGET = "Nats-Schedule-Target"
HDR_SCHEDULE_TZ = "Nats-Schedule-Time-Zone"
HDR_SCHEDULER = "Nats-Scheduler"
HDR_SCHEDULE_NEXT = "Nats-Schedule-Next"
# headers of our own, for people reading the stream (the envelope stays the source of truth)
HDR_JOB_ID = "Jetmail-Job-Id"
HDR_SCHEDULE_ID = "Jetmail-Schedule-Id"
HDR_DEAD_REASON = "Jetmail-Dead-Reason"
