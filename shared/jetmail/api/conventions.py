"""The shapes every API route shares: ``Page[T]`` for lists and ``Problem`` (RFC 9457) for errors.

A problem's ``type`` is ``https://jetmail.dev/problems/<slug>``: an identifier to switch on, documented in
docs/reference/api.md, not a page jetmail fetches. A domain exception's slug is its class name in kebab case
(``IdempotencyConflict`` -> ``idempotency-conflict``); any other error's slug names its status
(``not-found``, ``validation-error``, ``rate-limited``, ...).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://jetmail.dev/problems/"
# the slug of an error that is not a domain exception, by status
STATUS_SLUGS: dict[int, str] = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    409: "conflict", 413: "body-too-large", 422: "validation-error", 429: "rate-limited", 500: "internal",
    502: "bad-gateway", 503: "unavailable",
}


class Page(BaseModel, Generic[T]):
    """One page of a list route. Routes that return everything at once answer ``next_cursor: null``."""

    data: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class FieldError(BaseModel):
    """One invalid field of a 422. Domain checks may add members (a template problem names its template)."""

    model_config = ConfigDict(extra="allow")
    field: str = Field(description="the body field's dotted path (`to`, `audience.0.list_id`), or the "
                                   "query, path or header parameter's name (`limit`)")
    message: str


class Problem(BaseModel):
    """An error answer, RFC 9457 ``application/problem+json``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "type": PROBLEM_BASE + "validation-error", "title": "Unprocessable Entity", "status": 422,
        "detail": "invalid request: to",
        "errors": [{"field": "to", "message": "Value error, An email address must have an @-sign."}],
    }]})
    type: str = Field(description="`https://jetmail.dev/problems/<slug>`; switch on this, not on `detail`")
    title: str = Field(description="a short summary of the type; the same for every problem of the type")
    status: int
    detail: str = Field(description="what went wrong this time, for a person to read")
    errors: list[FieldError] = Field(default_factory=list, description="on every 422: each invalid field (empty "
                                                                       "when no one field is at fault); absent "
                                                                       "on other statuses")


def slug_for_class(name: str) -> str:
    """``IdempotencyConflict`` -> ``idempotency-conflict``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def problem(status: int, detail: str, *, slug: str | None = None,
            errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The body of a problem answer; ``slug`` defaults to the status's. A 422 always carries ``errors``."""
    slug = slug or STATUS_SLUGS.get(status, "error")
    title = slug.replace("-", " ").capitalize()
    if slug == STATUS_SLUGS.get(status):
        title = HTTPStatus(status).phrase
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    if status == 422 or errors:
        body["errors"] = errors or []
    return body
