"""The dependency every API route carries: actions recorded during a request name its API key as their actor.

Apart from the audit routes (``jetmail.api.audit``) so that building the app, which adds it to every route,
loads none of the API key store (boto3) before a request needs it.
"""

from __future__ import annotations

from fastapi import Request

from jetmail.compliance import audit


async def bind_actor(request: Request) -> None:
    """Every action recorded while this request runs names its API key. Async, so the binding is
    made in the request's own context, which the route's worker thread inherits; the key is read
    when an action is recorded, after authentication."""

    def actor() -> str | None:
        key = getattr(request.state, "api_key", None)
        return f"key:{key.key_id}" if key is not None else None

    audit.bind_actor(actor)
