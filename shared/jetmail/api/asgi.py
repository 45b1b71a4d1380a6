"""What the API's plain ASGI middleware share: they act on HTTP requests only, and answer in JSON by hand."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send


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


async def send_json(send: Send, status: int, body: bytes, *, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``status`` with ``body``, JSON already encoded: the start with its type and length, then the body."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
