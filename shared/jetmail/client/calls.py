"""What the sync and async clients share: a request described once (``Call``) and the retry policy."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from jetmail.client.errors import ApiError, error_for

JsonObject = dict[str, Any]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Call:
    """One API request: ``params`` with None values are left out; ``body`` is sent as JSON unless ``content``
    (raw bytes with ``content_type``) is given."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    content: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice is harmless: safe methods, and any request with an Idempotency-Key."""
        return self.method in _IDEMPOTENT_METHODS or "Idempotency-Key" in self.headers

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        params = {k: v for k, v in self.params.items() if v is not None}
        headers = dict(self.headers)
        if self.content is not None:
            if self.content_type:
                headers["Content-Type"] = self.content_type
            return http.build_request(self.method, self.path, params=params, content=self.content,
                                      headers=headers)
        if self.body is None:
            return http.build_request(self.method, self.path, params=params, headers=headers)
        return http.build_request(self.method, self.path, params=params, json=self.body, headers=headers)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 and 5xx answers, and of connection errors on idempotent requests: exponential backoff
    from ``base_s`` up to ``max_s`` with full jitter, or the server's ``Retry-After`` when it gives one (capped
    at ``max_retry_after_s``: a longer wait is the caller's decision, so the error is raised instead)."""

    attempts: int = 4
    base_s: float = 0.5
    max_s: float = 8.0
    max_retry_after_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1 for the first retry)."""
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))

    def after_response(self, call: Call, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying ``call`` again after ``response``, or None to give up on it."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.attempts:
            return None
        if response.status_code != 429 and not call.idempotent:
            # a 5xx on a POST without a key may have done its work: sending it again could do it twice
            return None
        wait = retry_after(response)
        if wait is None:
            return self.backoff(attempt)
        return wait if wait <= self.max_retry_after_s else None

    def after_error(self, call: Call, attempt: int) -> float | None:
        """Seconds to wait before trying ``call`` again after a transport error, or None to give up."""
        if not call.idempotent or attempt >= self.attempts:
            return None
        return self.backoff(attempt)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (it may be seconds or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def decode(response: httpx.Response) -> JsonObject:
    """The answer's JSON object (empty for a 204), or the ``ApiError`` its problem body describes."""
    if response.status_code >= 400:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise _error(response, body)
    if response.status_code == 204 or not response.content:
        return {}
    data = response.json()
    return data if isinstance(data, dict) else {"data": data}


def _error(response: httpx.Response, body: Any) -> ApiError:
    return error_for(response.status_code, body, retry_after=retry_after(response))
