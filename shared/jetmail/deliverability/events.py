"""Delivery and engagement events in one normalised shape, whatever reported them.

SES notifications (both the classic ``notificationType`` format and configuration-set event
publishing), jetmail's own open pixel and click redirect, unsubscribe requests and the local SES
mailbox simulator all become ``DeliveryEvent`` values, one per recipient, and go through one
processor (``jetmail.deliverability.feedback``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class EventKind(StrEnum):
    SEND = "send"
    DELIVERY = "delivery"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    REJECT = "reject"
    DELIVERY_DELAY = "delivery_delay"
    RENDERING_FAILURE = "rendering_failure"
    OPEN = "open"
    CLICK = "click"
    SUBSCRIPTION = "subscription"
    UNSUBSCRIBE = "unsubscribe"


class DeliveryEvent(BaseModel):
    kind: EventKind
    recipient: str = Field(description="the address the event is about (lower-cased)")
    occurred_at: datetime
    event_id: str = Field(description="stable identity of this event for de-duplication")
    message_id: str | None = Field(default=None, description="jetmail's message id (tags / our header)")
    provider_message_id: str | None = None
    campaign_id: str | None = None
    variant: str | None = None
    source: Literal["ses", "tracking", "simulator", "api", "smtp"] = "ses"
    bounce_type: Literal["Permanent", "Transient", "Undetermined"] | None = None
    bounce_subtype: str | None = None
    diagnostic: str | None = Field(default=None, max_length=1000)
    complaint_type: str | None = None
    complaint_subtype: str | None = Field(default=None, description="SES: OnAccountSuppressionList when not sent")
    link_url: str | None = None
    link_index: int | None = None
    user_agent: str | None = Field(default=None, max_length=512)
    ip: str | None = None
    country: str | None = None
    machine: bool = Field(default=False, description="an open or click by a proxy or scanner, not a person")
    sent_at: datetime | None = Field(default=None, description="when the provider accepted the message, as it "
                                                               "reports it (SES ``mail.timestamp``)")
    list_id: str | None = None


def event_id(*parts: object) -> str:
    """A stable id from the fields that identify an event (when the reporter gives none)."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
