"""Exceptions of the job layer: what callers catch, and what task handlers raise to steer retries."""

from __future__ import annotations


class QueueError(RuntimeError):
    """The job layer could not do what was asked (missing stream, server refused, ...)."""


class NotFoundError(QueueError, LookupError):
    """A dead letter, schedule or other named object does not exist."""


class JobValidationError(QueueError, ValueError):
    """A payload does not fit the task's model; raised before anything is published."""


class UnknownTaskError(QueueError, LookupError):
    """No handler is registered under that task name."""


class Retry(Exception):
    """Raised by a task: try again, after ``delay`` seconds or the job's computed backoff."""

    def __init__(self, delay: float | None = None) -> None:
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must not be negative")
        super().__init__(f"retry requested (delay={delay})")
        self.delay = delay


class PermanentFailure(Exception):
    """Raised by a task: retrying cannot help; send the job to the dead-letter stream now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
