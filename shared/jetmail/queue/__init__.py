"""jetmail's job layer on NATS JetStream, shaped like naq.

Jobs are JSON envelopes on a work-queue stream (``jobs.<queue>.<priority>``), pulled by durable consumers,
de-duplicated by job id, delayed and repeated by the server's own message schedules, and dead-lettered to a
stream of their own when they fail for good. This package imports nothing else from jetmail.
"""

from .client import Queue
from .config import QueueConfig
from .errors import JobValidationError, NotFoundError, PermanentFailure, QueueError, Retry, UnknownTaskError
from .models import Backoff, DeadLetter, JobEnvelope, JobRef, ScheduleInfo
from .registry import Registry, TaskDef, registry, task
from .subjects import PRIORITIES, Priority
from .sync import SyncClient, ensure_streams, get_sync_client
from .worker import JobContext, Worker

__all__ = [
    "PRIORITIES",
    "Backoff",
    "DeadLetter",
    "JobContext",
    "JobEnvelope",
    "JobRef",
    "JobValidationError",
    "NotFoundError",
    "PermanentFailure",
    "Priority",
    "Queue",
    "QueueConfig",
    "QueueError",
    "Registry",
    "Retry",
    "ScheduleInfo",
    "SyncClient",
    "TaskDef",
    "UnknownTaskError",
    "Worker",
    "ensure_streams",
    "get_sync_client",
    "registry",
    "task",
]
