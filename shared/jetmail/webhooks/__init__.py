"""Outgoing webhooks: events pushed to the endpoints an application registers (docs/guide/webhooks.md).

Sources (the send path, provider feedback, campaigns, suppressions) build ``WebhookEvent``s with the
builders of ``events`` and hand them to their ``WebhookSink`` (``emitter.Emitter``, or ``DISABLED``); a
worker fans each emitted job out (``dispatch``) and delivers it, signed the Standard Webhooks way
(``signing``), through the address-checked transport (``transport``), logging every attempt
(``deliveries``). ``service`` is what the API and CLI manage endpoints with.
"""

from jetmail.webhooks.emitter import DISABLED, WEBHOOK_QUEUE, Emitter, WebhookSink
from jetmail.webhooks.events import (
    EVENT_TYPES,
    WebhookEvent,
    campaign_event,
    campaign_sent_events,
    feedback_event,
    message_event,
    suppression_event,
)

__all__ = [
    "DISABLED",
    "EVENT_TYPES",
    "WEBHOOK_QUEUE",
    "Emitter",
    "WebhookEvent",
    "WebhookSink",
    "campaign_event",
    "campaign_sent_events",
    "feedback_event",
    "message_event",
    "suppression_event",
]
