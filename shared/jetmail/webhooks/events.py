"""What a webhook says: the event types, the payload every receiver gets, and the builders the sources use.

Every event has a stable id derived from what caused it (the message and the outcome, the provider's
event id, the campaign and its transition), so a source that runs again (a redelivered job, an SNS retry)
emits the same id, and a receiver de-duplicates on it. Nothing here touches the network or a table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

EventType = Literal[
    "message.queued", "message.sent", "message.failed", "message.delivered", "message.delivery_delayed",
    "message.bounced", "message.complained", "message.opened", "message.clicked", "message.unsubscribed",
    "campaign.started", "campaign.paused", "campaign.finished",
    "suppression.added",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

# DeliveryEvent kinds (jetmail.deliverability.events.EventKind values) that become message events
_FEEDBACK_TYPES: dict[str, EventType] = {
    "delivery": "message.delivered", "delivery_delay": "message.delivery_delayed", "bounce": "message.bounced",
    "complaint": "message.complained", "open": "message.opened", "click": "message.clicked",
    "unsubscribe": "message.unsubscribed",
}


class WebhookEvent(BaseModel):
    """One event as a receiver gets it: the JSON body of a delivery (``id`` is also ``webhook-id``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="stable: the same cause always has the same id")
    type: EventType
    timestamp: AwareDatetime = Field(description="when it happened (not when it was delivered)")
    data: dict[str, Any] = Field(default_factory=dict)

    def matches(self, *, category: str | None, tag: str | None, campaign_id: str | None) -> bool:
        """Whether an endpoint's filter (each part optional) lets this event through."""
        data = self.data
        if category is not None and data.get("category") != category:
            return False
        if campaign_id is not None and data.get("campaign_id") != campaign_id:
            return False
        if tag is not None:
            tags = data.get("tags") or ()
            if tag not in (tags.keys() if isinstance(tags, Mapping) else tags):
                return False
        return True


def event_id(kind: str, *cause: object) -> str:
    """``evt_`` and 26 hex digits of SHA-256 over the type and what caused the event."""
    digest = hashlib.sha256("|".join([kind, *map(str, cause)]).encode()).hexdigest()
    return f"evt_{digest[:26]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return _now()
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return _now()


def message_data(record: Mapping[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """The ``data`` of a message event: ids, recipient, category, and the message's ``metadata`` and ``tags``
    when its record has them."""
    data: dict[str, Any] = {}
    if record is not None:
        data.update(message_id=record.get("id"), to=record.get("to"), category=record.get("category"),
                    campaign_id=record.get("campaign_id"), template=record.get("template"))
        for name in ("metadata", "tags"):
            if record.get(name):
                data[name] = record.get(name)
    data.update({k: v for k, v in fields.items() if v is not None})
    return {k: v for k, v in data.items() if v is not None}


def message_event(kind: EventType, record: Mapping[str, Any], *, at: Any = None, **fields: Any) -> WebhookEvent:
    """``queued``, ``sent`` or ``failed`` of a transactional message record: one of each per message."""
    return WebhookEvent(id=event_id(kind, record["id"]), type=kind, timestamp=_when(at),
                        data=message_data(record, **fields))


def campaign_sent_events(campaign_id: str, sends: Iterable[tuple[str, str]], *,
                         variant: str | None = None) -> list[WebhookEvent]:
    """``message.sent`` for each (message id, address) a campaign batch sent."""
    now = _now()
    return [WebhookEvent(id=event_id("message.sent", message_id), type="message.sent", timestamp=now,
                         data=message_data(None, message_id=message_id, to=to, category="marketing",
                                           campaign_id=campaign_id, variant=variant))
            for message_id, to in sends]


def feedback_event(event: Any, *, message_id: str | None, recipient: str, category: str | None,
                   campaign_id: str | None) -> WebhookEvent | None:
    """The webhook of one provider or tracking event (a ``DeliveryEvent``), None for kinds without one."""
    kind = _FEEDBACK_TYPES.get(str(getattr(event.kind, "value", event.kind)))
    if kind is None:
        return None
    fields: dict[str, Any] = {"message_id": message_id, "to": recipient, "category": category,
                              "campaign_id": campaign_id, "source": event.source}
    if kind == "message.bounced":
        fields.update(bounce_type=event.bounce_type, bounce_subtype=event.bounce_subtype,
                      diagnostic=event.diagnostic)
    elif kind == "message.complained":
        fields.update(complaint_type=event.complaint_type)
    elif kind in ("message.opened", "message.clicked"):
        fields.update(machine=bool(event.machine), user_agent=event.user_agent)
        if kind == "message.clicked":
            fields.update(link=event.link_url, link_index=event.link_index)
    elif kind == "message.unsubscribed":
        fields.update(list_id=event.list_id)
    elif kind == "message.delivery_delayed":
        fields.update(diagnostic=event.diagnostic)
    return WebhookEvent(id=event_id(kind, event.event_id), type=kind, timestamp=_when(event.occurred_at),
                        data=message_data(None, **fields))


def campaign_event(kind: Literal["campaign.started", "campaign.paused", "campaign.finished"],
                   campaign_id: str, *, cause: str, at: Any = None, **fields: Any) -> WebhookEvent:
    """A campaign's transition; ``cause`` tells two transitions of one campaign apart (a pause's time)."""
    return WebhookEvent(id=event_id(kind, campaign_id, cause), type=kind, timestamp=_when(at),
                        data={"campaign_id": campaign_id, **{k: v for k, v in fields.items() if v is not None}})


def suppression_event(email: str, *, reason: str, source: str, at: str) -> WebhookEvent:
    return WebhookEvent(id=event_id("suppression.added", email, at), type="suppression.added", timestamp=_when(at),
                        data={"email": email, "reason": reason, "source": source})
