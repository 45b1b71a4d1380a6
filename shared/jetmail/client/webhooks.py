"""Checking that a webhook delivery came from jetmail, with the reference Standard Webhooks verifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class WebhookVerificationError(Exception):
    """The delivery is not to be trusted: a header missing, no signature made with the secret matches the
    body, or its timestamp more than five minutes from now (a replayed delivery). Answer it with a 4xx."""


def verify_webhook(payload: bytes, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The event of a delivery whose ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers
    prove it was signed with ``secret`` (``whsec_...``, the endpoint's) less than five minutes ago. Pass the
    body exactly as received, before any JSON parsing. During a secret rotation a delivery carries one
    signature per valid secret, so the old secret and the new both verify. Costs one HMAC-SHA256."""
    try:
        from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook
        from standardwebhooks.webhooks import WebhookVerificationError as Refused
    except ImportError:
        raise RuntimeError("verify_webhook needs the standardwebhooks package: pip install 'jetmail[client]'") from None
    try:
        event = Webhook(secret).verify(payload, dict(headers))
    except Refused as exc:
        reason = str(exc)
        if reason in {"Message timestamp too old", "Message timestamp too new"}:
            reason += " (more than five minutes from this machine's clock: a replay, or a wrong clock)"
        raise WebhookVerificationError(reason) from None
    except (ValueError, EmptyWebhookSecretError) as exc:
        raise WebhookVerificationError(f"not a JSON event or not a valid secret: {exc}") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event
