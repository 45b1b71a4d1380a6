"""What delivery needs from a mail provider, and the two ways a send can fail.

A provider either accepts a message (``SendResult``) or raises one of two typed errors: the job
layer turns ``TemporaryDeliveryError`` into a delayed redelivery and ``PermanentDeliveryError``
into a final failure. Nothing above this layer inspects provider error text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from jetmail.deliverability.events import DeliveryEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """One fully built message and its envelope; jetmail sends one recipient per message."""

    mail_from: str
    recipients: Sequence[str]
    raw: bytes
    message_id: str
    smtputf8: bool = False
    # SES attribution (message_id, campaign_id, variant, category); ignored by SMTP.
    tags: Mapping[str, str] = field(default_factory=dict)
    # whose connections it takes: the transactional lane's (the messages API) or the campaigns' ("marketing")
    lane: str = "transactional"
    # every line of ``raw`` ends in CRLF, as jetmail.messaging.mime builds a message: SMTP sends it as it is
    crlf: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    provider: str
    # SES MessageId, or the SMTP server's queue id (falling back to the Message-ID header).
    provider_message_id: str | None
    accepted: tuple[str, ...]


class DeliveryError(Exception):
    """A send that did not go through; ``reason`` is safe to store and show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TemporaryDeliveryError(DeliveryError):
    """Try the same message again later.

    ``throttled`` means the provider asked us to slow down (all messages, not just this one);
    ``retry_after`` is a delay in seconds when the provider suggested one.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None, throttled: bool = False,
                 code: int | str | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.throttled = throttled
        self.code = code


class PermanentDeliveryError(DeliveryError):
    """This message will never be accepted as it is; ``code`` is the SMTP reply code or SES error code.
    ``bounce``: what a 5xx refusal of a recipient says about the address, for the feedback processor."""

    def __init__(self, reason: str, *, code: int | str | None = None, bounce: DeliveryEvent | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.bounce = bounce


@runtime_checkable
class Provider(Protocol):
    name: str

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def close(self) -> None: ...
