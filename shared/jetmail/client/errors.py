"""Typed errors built from the API's RFC 9457 ``application/problem+json`` answers."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://jetmail.dev/problems/"


class ApiError(Exception):
    """An answer of 4xx or 5xx. ``slug`` is the last part of ``type`` (``not-found``, ``validation-error``,
    ``idempotency-conflict``...): switch on it or on the subclass, never on ``detail``."""

    def __init__(self, *, status: int, type: str, title: str, detail: str,
                 errors: list[dict[str, Any]] | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after

    @property
    def slug(self) -> str:
        return self.type.removeprefix(PROBLEM_BASE)


class BadRequest(ApiError):
    """400 or 422: the request is wrong; ``errors`` names each invalid field of a 422."""


class Unauthorized(ApiError):
    """401: no key, or an unknown or revoked one."""


class Forbidden(ApiError):
    """403: the key lacks the scope the route needs."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: the state does not allow this, or an Idempotency-Key reused with a different body."""


class RateLimited(ApiError):
    """429 after the retries ran out; ``retry_after`` is the server's last answer, in seconds."""


class ServerError(ApiError):
    """5xx after the retries ran out."""


class TransportError(Exception):
    """No answer at all (connection refused, timeout) after the retries ran out."""


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 422: BadRequest, 429: RateLimited}


def error_for(status: int, body: Any, *, retry_after: float | None = None) -> ApiError:
    """The error for an answer's status and decoded body; a body that is no problem document (a proxy's HTML
    page) still gives an error with the status's type."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    problem = body if isinstance(body, dict) else {}
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = body if isinstance(body, str) and body else f"HTTP {status}"
    errors = problem.get("errors")
    return cls(status=status, type=str(problem.get("type") or f"{PROBLEM_BASE}http-{status}"),
               title=str(problem.get("title") or f"HTTP {status}"), detail=detail[:1000],
               errors=errors if isinstance(errors, list) else [], retry_after=retry_after)
