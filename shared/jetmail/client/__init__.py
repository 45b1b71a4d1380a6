"""A typed Python client for jetmail's HTTP API (docs/guide/sdk.md), and a webhook verifier.

It speaks HTTP only and imports nothing of the rest of jetmail, so an application can use it with the
``jetmail`` package installed and none of its services::

    from jetmail.client import Client

    with Client("https://mail.example.com", api_key) as api:
        message = api.send("ada@example.com", template="welcome", context={"name": "Ada"})
"""

from jetmail.client.calls import JsonObject, RetryPolicy
from jetmail.client.clients import AsyncClient, Client
from jetmail.client.endpoints import attachment, message
from jetmail.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
)
from jetmail.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError", "AsyncClient", "BadRequest", "Client", "Conflict", "Forbidden", "JsonObject", "NotFound",
    "RateLimited", "RetryPolicy", "ServerError", "TransportError", "Unauthorized", "WebhookVerificationError",
    "attachment", "message", "verify_webhook",
]
