"""``Client`` and ``AsyncClient``: the same calls (``Endpoints``) over httpx, blocking or on an event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any

import httpx

from jetmail.client.calls import Call, JsonObject, RetryPolicy, decode
from jetmail.client.endpoints import Endpoints
from jetmail.client.errors import TransportError

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def _options(base_url: str, api_key: str, timeout: float | httpx.Timeout | None) -> dict[str, Any]:
    if not base_url:
        raise ValueError("the API's base URL is required (JETMAIL_API_URL)")
    if not api_key:
        raise ValueError("an API key is required (JETMAIL_API_KEY)")
    return {"base_url": base_url.rstrip("/"), "timeout": DEFAULT_TIMEOUT if timeout is None else timeout,
            "headers": {"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                        "User-Agent": "jetmail-client"}}


def _next_page(call: Call, page: JsonObject) -> Call | None:
    cursor = page.get("next_cursor")
    return replace(call, params={**call.params, "cursor": cursor}) if cursor else None


class Client(Endpoints[JsonObject, Iterator[JsonObject]]):
    """The API, blocking. Open one per process and close it (or use ``with``): it holds a connection pool.
    Each call costs one request, plus a retry for each 429 or 5xx (``retry``); errors are ``ApiError``."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float | httpx.Timeout | None = None,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(transport=transport, **_options(base_url, api_key, timeout))

    def _call(self, call: Call) -> JsonObject:
        attempt = 1
        while True:
            try:
                response = self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                wait = self.retry.after_error(call, attempt)
                if wait is None:
                    raise TransportError(f"{call.method} {call.path}: {exc}") from exc
            else:
                wait = self.retry.after_response(call, response, attempt)
                if wait is None:
                    return decode(response)
            time.sleep(wait)
            attempt += 1

    def _pages(self, call: Call) -> Iterator[JsonObject]:
        next_call: Call | None = call
        while next_call is not None:
            page = self._call(next_call)
            yield from page.get("data", [])
            next_call = _next_page(next_call, page)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(Endpoints[Awaitable[JsonObject], AsyncIterator[JsonObject]]):
    """The API on an event loop: every call is awaited, every ``iter_*`` is an ``async for``. Same costs,
    retries and errors as ``Client``."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float | httpx.Timeout | None = None,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(transport=transport, **_options(base_url, api_key, timeout))

    async def _call(self, call: Call) -> JsonObject:
        attempt = 1
        while True:
            try:
                response = await self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                wait = self.retry.after_error(call, attempt)
                if wait is None:
                    raise TransportError(f"{call.method} {call.path}: {exc}") from exc
            else:
                wait = self.retry.after_response(call, response, attempt)
                if wait is None:
                    return decode(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def _pages(self, call: Call) -> AsyncIterator[JsonObject]:
        next_call: Call | None = call
        while next_call is not None:
            page = await self._call(next_call)
            for item in page.get("data", []):
                yield item
            next_call = _next_page(next_call, page)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
