"""What the API's plain ASGI middleware share: they act on HTTP requests only, and answer problems by hand."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from jetmail.api.conventions import PROBLEM_MEDIA_TYPE, problem


class HttpMiddleware(ABC):
    """Middleware that ``handle``s HTTP requests; any other scope (lifespan) goes to the app untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    @abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None: ...


async def send_json(send: Send, status: int, body: bytes, *, headers: Iterable[tuple[bytes, bytes]] = (),
                    media_type: str = "application/json") -> None:
    """Answer ``status`` with ``body``, JSON already encoded: the start with its type and length, then the body."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def encode_problem(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def send_problem(send: Send, status: int, detail: str, *, slug: str | None = None,
                       errors: list[dict[str, Any]] | None = None,
                       headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``status`` with a problem (jetmail.api.conventions.problem)."""
    body = encode_problem(problem(status, detail, slug=slug, errors=errors))
    await send_json(send, status, body, headers=headers, media_type=PROBLEM_MEDIA_TYPE)
