"""Request body size limit as plain ASGI middleware (it must see chunked bodies too).

A declared Content-Length over the limit is refused before anything is read. Otherwise the body is
read here, at most ``max_bytes`` of it, and handed to the app in one piece: a chunked body without a
Content-Length that grows past the limit is refused with the same 413, instead of failing inside the
framework's body parsing (which would answer 400). Bodies are small (256 KiB by default, and API
Gateway hands Lambda the whole body anyway), so holding one in memory costs nothing worth saving.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jetmail.api.asgi import HttpMiddleware, send_problem
from jetmail.config import Settings


class BodyTooLarge(Exception):
    """A body over the limit, for code that reads one itself; the app's error mapping answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body exceeds {max_bytes} bytes")


class BodySizeLimit(HttpMiddleware):
    def __init__(self, app: ASGIApp, *, max_bytes: int, route_limits: dict[str, int] | None = None) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        # paths whose bodies may be larger (the message routes, which carry attachments)
        self.route_limits = route_limits or {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.route_limits.get(scope.get("path", ""), self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # the client went away before the body was complete: let the app see that
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await self._reject(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _reject(self, send: Send, limit: int) -> None:
        await send_problem(send, 413, f"request body exceeds {limit} bytes",
                           headers=[(b"connection", b"close")])


def message_body_limits(settings: Settings) -> dict[str, int]:
    """The message routes take attachments: ``max_attachment_bytes`` in base64 on top of the usual limit
    (a batch shares one such allowance among its messages)."""
    limit = settings.max_body_bytes + -(-settings.max_attachment_bytes // 3) * 4
    return {"/v1/messages": limit, "/v1/messages/batch": limit}


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives ``messages``, then whatever the server sends next (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
