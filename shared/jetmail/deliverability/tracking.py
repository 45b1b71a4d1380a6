"""Open pixel, click redirect and unsubscribe: signed tokens in, events out.

Tokens are HMAC-signed (``jetmail.messaging.tokens``) with a purpose each. A click token carries the
message id, the link's index and the link itself, so the redirect can only lead where the email
pointed: there is no parameter to tamper with, and a tampered token is a 404.

Machine opens and scanner clicks are recorded apart from human ones (reports use human counts), by
the rules in ``jetmail.deliverability.machines`` that SES-reported opens and clicks go through too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id
from jetmail.deliverability.feedback import FeedbackProcessor
from jetmail.deliverability.machines import is_machine, link_burst
from jetmail.messaging.compose import CLICK_PURPOSE, OPEN_PURPOSE, UNSUBSCRIBE_PURPOSE
from jetmail.messaging.tokens import Signer


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    message_id: str
    email: str
    list_id: str | None


class Tracker:
    def __init__(self, *, signer: Signer, feedback: FeedbackProcessor) -> None:
        self.signer = signer
        self.feedback = feedback

    def open(self, token: str, *, user_agent: str | None, ip: str | None, country: str | None,
             now: datetime | None = None) -> bool:
        """Record an open; False for an invalid token (the pixel is served either way)."""
        payload = self.signer.verify(OPEN_PURPOSE, token)
        if payload is None or not isinstance(payload.get("m"), str):
            return False
        self._record(EventKind.OPEN, payload["m"], user_agent=user_agent, ip=ip, country=country, now=now)
        return True

    def click(self, token: str, *, user_agent: str | None, ip: str | None, country: str | None,
              now: datetime | None = None) -> str | None:
        """The URL to redirect to, or None for an invalid token."""
        payload = self.signer.verify(CLICK_PURPOSE, token)
        if payload is None:
            return None
        url, message_id, index = payload.get("u"), payload.get("m"), payload.get("i")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or not isinstance(message_id, str) \
                or not isinstance(index, int):
            return None
        self._record(EventKind.CLICK, message_id, user_agent=user_agent, ip=ip, country=country, now=now,
                     link_url=url, link_index=index)
        return url

    def _record(self, kind: EventKind, message_id: str, *, user_agent: str | None, ip: str | None,
                country: str | None, now: datetime | None, link_url: str | None = None,
                link_index: int | None = None) -> None:
        now = now or datetime.now(UTC)
        probe = DeliveryEvent(kind=kind, recipient="", occurred_at=now, event_id="-", message_id=message_id)
        who = self.feedback.attribute(probe)
        since_send = now - datetime.fromisoformat(who.sent_at) if who.sent_at else None
        machine = is_machine("open" if kind == EventKind.OPEN else "click", user_agent=user_agent, ip=ip,
                             since_send=since_send)
        if kind == EventKind.CLICK and not machine:
            machine = self._link_burst(message_id, link_index, now)
        self.feedback.process(DeliveryEvent(
            kind=kind, recipient=who.recipient, occurred_at=now, message_id=message_id, source="tracking",
            event_id=event_id(kind.value, message_id, link_index, now.isoformat(), user_agent, ip),
            user_agent=(user_agent or "")[:512] or None, ip=ip, country=country, machine=machine,
            link_url=link_url, link_index=link_index, campaign_id=who.campaign_id, variant=who.variant,
        ))

    def _link_burst(self, message_id: str, link_index: int | None, now: datetime) -> bool:
        return link_burst(self.feedback.stats, message_id, link=link_index, now=now)

    # ---- unsubscribe
    def unsubscribe_target(self, token: str) -> Unsubscribe | None:
        payload = self.signer.verify(UNSUBSCRIBE_PURPOSE, token)
        if payload is None or not isinstance(payload.get("m"), str) or not isinstance(payload.get("e"), str):
            return None
        list_id = payload.get("l") if isinstance(payload.get("l"), str) else None
        return Unsubscribe(message_id=payload["m"], email=payload["e"].lower(), list_id=list_id)

    def unsubscribe(self, target: Unsubscribe, *, everything: bool, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        scope = None if everything else target.list_id
        self.feedback.process(DeliveryEvent(
            kind=EventKind.UNSUBSCRIBE, recipient=target.email, occurred_at=now, message_id=target.message_id,
            event_id=event_id("unsubscribe", target.message_id, scope or "all"), source="tracking", list_id=scope,
        ))
