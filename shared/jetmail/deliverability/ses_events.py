"""SES feedback in, ``DeliveryEvent`` values out, and the two ways it reaches jetmail.

SES publishes two JSON formats to SNS, and both are read here:

* notifications set on an identity: ``notificationType`` Bounce, Complaint or Delivery (no tags;
  the original headers only when "include original headers" is on);
* configuration-set event publishing: ``eventType`` Send, Reject, Bounce, Complaint, Delivery,
  Open, Click, DeliveryDelay, Rendering Failure or Subscription (with ``mail.tags``).

Each becomes one ``DeliveryEvent`` per recipient. jetmail finds its own message id in the SES
message tag ``message_id`` (older stacks tagged ``jetmail-message-id``) or in the
``X-Jetmail-Message-Id`` header. SES tag values only allow ``[A-Za-z0-9_-]``, so when the header is
there and matches the tag once sanitised, the header's exact value wins.

Event ids are stable, so a redelivered notification is recognised as a duplicate: bounces and
complaints use SES's ``feedbackId`` with the kind and the recipient (one feedback can name several
recipients), everything else the SES message id, recipient and event time. The same feedback
published in both formats therefore gets the same id.

``SesEventIntake`` feeds them to the feedback processor from an SNS-triggered Lambda (the
invocation itself is authorised by IAM) and from the public ``POST /sns/ses`` route (authorised by
the SNS signature alone, see ``jetmail.aws.sns``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from email.utils import parseaddr
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from jetmail.aws.sns import SnsMessage, SnsVerificationError, SnsVerifier
from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id

logger = logging.getLogger("jetmail.deliverability.ses_events")

ON_ACCOUNT_SUPPRESSION_LIST = "OnAccountSuppressionList"
MESSAGE_ID_TAGS = ("message_id", "jetmail-message-id")
MESSAGE_ID_HEADER = "x-jetmail-message-id"
# SES sends this once when a topic is first set as an identity's notification destination.
_SUBSCRIPTION_SUCCEEDED = "AmazonSnsSubscriptionSucceeded"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_USER_AGENT_MAX = 512
_DIAGNOSTIC_MAX = 1000
_T = TypeVar("_T")


class SesEventError(ValueError):
    """The text is not an SES notification or event jetmail understands."""


# ---------------------------------------------------------------- the SES JSON, as far as jetmail reads it

class _Model(BaseModel):
    # SES reserves the right to add fields
    model_config = ConfigDict(extra="ignore")


class SesHeader(_Model):
    name: str
    value: str


class SesMail(_Model):
    timestamp: datetime
    messageId: str = Field(min_length=1)
    source: str | None = None
    destination: list[str] = Field(default_factory=list)
    headers: list[SesHeader] = Field(default_factory=list)
    tags: dict[str, list[str]] = Field(default_factory=dict)


class SesRecipientStatus(_Model):
    emailAddress: str = Field(min_length=1)
    action: str | None = None
    status: str | None = None
    diagnosticCode: str | None = None


class SesBounce(_Model):
    bounceType: Literal["Permanent", "Transient", "Undetermined"]
    bounceSubType: str
    bouncedRecipients: list[SesRecipientStatus] = Field(min_length=1)
    timestamp: datetime
    feedbackId: str = Field(min_length=1)
    reportingMTA: str | None = None


class SesComplainedRecipient(_Model):
    emailAddress: str = Field(min_length=1)


class SesComplaint(_Model):
    complainedRecipients: list[SesComplainedRecipient] = Field(min_length=1)
    timestamp: datetime
    feedbackId: str = Field(min_length=1)
    complaintFeedbackType: str | None = None
    complaintSubType: str | None = None
    userAgent: str | None = None


class SesDelivery(_Model):
    timestamp: datetime
    recipients: list[str] = Field(min_length=1)
    smtpResponse: str | None = None
    reportingMTA: str | None = None
    remoteMtaIp: str | None = None


class SesReject(_Model):
    reason: str | None = None


class SesOpen(_Model):
    timestamp: datetime
    userAgent: str | None = None
    ipAddress: str | None = None


class SesClick(_Model):
    timestamp: datetime
    link: str = Field(min_length=1)
    userAgent: str | None = None
    ipAddress: str | None = None
    linkTags: dict[str, list[str]] | None = None


class SesRenderingFailure(_Model):
    errorMessage: str | None = None
    templateName: str | None = None


class SesDeliveryDelay(_Model):
    timestamp: datetime
    delayType: str | None = None
    delayedRecipients: list[SesRecipientStatus] = Field(min_length=1)
    expirationTime: datetime | None = None
    reportingMTA: str | None = None


class SesTopicPreferences(_Model):
    unsubscribeAll: bool = False


class SesSubscription(_Model):
    timestamp: datetime
    contactList: str | None = None
    source: str | None = None
    newTopicPreferences: SesTopicPreferences | None = None


class SesNotification(_Model):
    """Both formats: ``notificationType`` (identity notifications) or ``eventType`` (event publishing)."""

    notificationType: str | None = None
    eventType: str | None = None
    mail: SesMail
    bounce: SesBounce | None = None
    complaint: SesComplaint | None = None
    delivery: SesDelivery | None = None
    send: dict[str, Any] | None = None
    reject: SesReject | None = None
    open: SesOpen | None = None
    click: SesClick | None = None
    failure: SesRenderingFailure | None = None
    deliveryDelay: SesDeliveryDelay | None = None
    subscription: SesSubscription | None = None


# ---------------------------------------------------------------- SES JSON → DeliveryEvent

def parse_ses_message(message: str | bytes | Mapping[str, Any]) -> list[DeliveryEvent]:
    """One ``DeliveryEvent`` per recipient of an SES notification or event; SesEventError for anything else."""
    data = _json_object(message)
    kind_name = data.get("eventType") or data.get("notificationType")
    if kind_name == _SUBSCRIPTION_SUCCEEDED:
        logger.info("SES confirmed an SNS notification destination: %s", data.get("message"))
        return []
    if not isinstance(kind_name, str):
        raise SesEventError("neither eventType nor notificationType: not an SES notification")
    parser = _PARSERS.get(kind_name)
    if parser is None:
        raise SesEventError(f"unknown SES event type {kind_name!r}")
    try:
        notification = SesNotification.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise SesEventError(f"invalid SES {kind_name}: {problems}") from None
    try:
        return parser(notification, _Attribution.of(notification.mail))
    except ValidationError as exc:
        raise SesEventError(f"SES {kind_name} cannot be normalised: {exc.errors()[0]['msg']}") from None


def _json_object(message: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    try:
        data = from_json(message)  # bounded nesting (a ValueError), unlike json.loads (RecursionError)
    except ValueError:
        raise SesEventError("SES message is not JSON") from None
    if not isinstance(data, dict):
        raise SesEventError("SES message is not a JSON object")
    return data


class _Attribution:
    """What every event of one SES mail object shares."""

    __slots__ = ("campaign_id", "list_id", "message_id", "provider_message_id", "sent_at", "variant")

    def __init__(self, *, message_id: str | None, provider_message_id: str, campaign_id: str | None,
                 variant: str | None, list_id: str | None, sent_at: datetime) -> None:
        self.message_id = message_id
        self.provider_message_id = provider_message_id
        self.campaign_id = campaign_id
        self.variant = variant
        self.list_id = list_id
        self.sent_at = sent_at

    @classmethod
    def of(cls, mail: SesMail) -> _Attribution:
        def tag(*names: str) -> str | None:
            for name in names:
                values = mail.tags.get(name)
                if values and values[0]:
                    return values[0]
            return None

        header = next((h.value.strip() for h in mail.headers if h.name.lower() == MESSAGE_ID_HEADER), None) or None
        tagged = tag(*MESSAGE_ID_TAGS)
        if tagged is None:
            message_id = header
        elif header is not None and _TAG_UNSAFE.sub("_", header)[:256] == tagged:
            message_id = header
        else:
            message_id = tagged
        return cls(message_id=message_id, provider_message_id=mail.messageId, campaign_id=tag("campaign_id"),
                   variant=tag("variant"), list_id=tag("list_id"), sent_at=mail.timestamp)

    def event(self, kind: EventKind, recipient: str, occurred_at: datetime, *, identity: Iterable[object] | None = None,
              **fields: Any) -> DeliveryEvent:
        address = _address(recipient)
        parts = identity if identity is not None else (self.provider_message_id, address, occurred_at.isoformat())
        return DeliveryEvent(kind=kind, recipient=address, occurred_at=occurred_at,
                             event_id=event_id(kind.value, *parts), message_id=self.message_id,
                             provider_message_id=self.provider_message_id, campaign_id=self.campaign_id,
                             variant=self.variant, source="ses", **fields)

    def each_destination(self, mail: SesMail, kind: EventKind, occurred_at: datetime, *,
                         extra_identity: tuple[object, ...] = (), **fields: Any) -> list[DeliveryEvent]:
        if not mail.destination:
            raise SesEventError(f"SES {kind.value} event names no destination")
        events = []
        for recipient in dict.fromkeys(mail.destination):
            address = _address(recipient)
            identity = (self.provider_message_id, address, occurred_at.isoformat(), *extra_identity)
            events.append(self.event(kind, recipient, occurred_at, identity=identity, **fields))
        return events


def _address(text: str) -> str:
    """``Name <a@b>`` or ``a@b`` → ``a@b``, lower-cased."""
    _, address = parseaddr(text)
    address = (address or text).strip().lower()
    if "@" not in address:
        raise SesEventError(f"not an email address: {text!r}")
    return address


def _clip(text: str | None, limit: int) -> str | None:
    return text[:limit] if text else None


def _bounce(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    bounce = _required(n.bounce, "bounce")
    return [who.event(EventKind.BOUNCE, r.emailAddress, bounce.timestamp,
                      identity=(bounce.feedbackId, _address(r.emailAddress)),
                      bounce_type=bounce.bounceType, bounce_subtype=bounce.bounceSubType,
                      diagnostic=_clip(r.diagnosticCode or r.status, _DIAGNOSTIC_MAX))
            for r in bounce.bouncedRecipients]


def _complaint(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    complaint = _required(n.complaint, "complaint")
    return [who.event(EventKind.COMPLAINT, r.emailAddress, complaint.timestamp,
                      identity=(complaint.feedbackId, _address(r.emailAddress)),
                      complaint_type=complaint.complaintFeedbackType, complaint_subtype=complaint.complaintSubType,
                      user_agent=_clip(complaint.userAgent, _USER_AGENT_MAX))
            for r in complaint.complainedRecipients]


def _delivery(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    delivery = _required(n.delivery, "delivery")
    return [who.event(EventKind.DELIVERY, r, delivery.timestamp,
                      diagnostic=_clip(delivery.smtpResponse, _DIAGNOSTIC_MAX))
            for r in dict.fromkeys(delivery.recipients)]


def _send(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    _required(n.send, "send")
    return who.each_destination(n.mail, EventKind.SEND, n.mail.timestamp)


def _reject(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    reject = _required(n.reject, "reject")
    return who.each_destination(n.mail, EventKind.REJECT, n.mail.timestamp,
                                diagnostic=_clip(reject.reason, _DIAGNOSTIC_MAX))


def _open(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    # SES cannot tell which recipient opened; jetmail sends one recipient per message
    opened = _required(n.open, "open")
    return who.each_destination(n.mail, EventKind.OPEN, opened.timestamp,
                                user_agent=_clip(opened.userAgent, _USER_AGENT_MAX), ip=opened.ipAddress,
                                sent_at=n.mail.timestamp)


def _click(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    click = _required(n.click, "click")
    return who.each_destination(n.mail, EventKind.CLICK, click.timestamp, extra_identity=(click.link,),
                                link_url=click.link, user_agent=_clip(click.userAgent, _USER_AGENT_MAX),
                                ip=click.ipAddress, sent_at=n.mail.timestamp)


def _rendering_failure(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    failure = _required(n.failure, "failure")
    detail = f"{failure.templateName}: {failure.errorMessage}" if failure.templateName else failure.errorMessage
    return who.each_destination(n.mail, EventKind.RENDERING_FAILURE, n.mail.timestamp,
                                diagnostic=_clip(detail, _DIAGNOSTIC_MAX))


def _delivery_delay(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    delay = _required(n.deliveryDelay, "deliveryDelay")
    events = []
    for r in delay.delayedRecipients:
        detail = "; ".join(p for p in (delay.delayType, r.status, r.diagnosticCode) if p) or None
        events.append(who.event(EventKind.DELIVERY_DELAY, r.emailAddress, delay.timestamp,
                                diagnostic=_clip(detail, _DIAGNOSTIC_MAX)))
    return events


def _subscription(n: SesNotification, who: _Attribution) -> list[DeliveryEvent]:
    # SES subscription management: "unsubscribe from all" is an unsubscribe; a topic change is only noted
    subscription = _required(n.subscription, "subscription")
    preferences = subscription.newTopicPreferences
    kind = EventKind.UNSUBSCRIBE if preferences is not None and preferences.unsubscribeAll else EventKind.SUBSCRIPTION
    return who.each_destination(n.mail, kind, subscription.timestamp,
                                diagnostic=_clip(f"SES contact list {subscription.contactList}"
                                                 if subscription.contactList else None, _DIAGNOSTIC_MAX))


def _required(value: _T | None, name: str) -> _T:
    if value is None:
        raise SesEventError(f"SES event without its {name!r} object")
    return value


_PARSERS: dict[str, Callable[[SesNotification, _Attribution], list[DeliveryEvent]]] = {
    "Bounce": _bounce,
    "Complaint": _complaint,
    "Delivery": _delivery,
    "Send": _send,
    "Reject": _reject,
    "Open": _open,
    "Click": _click,
    "Rendering Failure": _rendering_failure,
    "DeliveryDelay": _delivery_delay,
    "Subscription": _subscription,
}


# ---------------------------------------------------------------- intake: SNS → feedback processor

class FeedbackSink(Protocol):
    """What the intake needs from the feedback processor (``jetmail.deliverability.feedback.FeedbackProcessor``)."""

    def process(self, event: DeliveryEvent) -> str: ...


class BatchSummary(BaseModel):
    """What one SNS-triggered invocation did."""

    records: int = 0
    events: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)
    invalid: int = 0
    ignored: int = 0


class SnsReceipt(BaseModel):
    """The answer to one SNS HTTPS delivery."""

    type: str
    status: Literal["processed", "confirmed", "ignored"]
    message_id: str
    outcomes: dict[str, int] = Field(default_factory=dict)
    subscription_arn: str | None = None


class SesEventIntake:
    def __init__(self, *, feedback: FeedbackSink, verifier: SnsVerifier,
                 confirm: Callable[[SnsMessage], str]) -> None:
        self.feedback = feedback
        self.verifier = verifier
        self.confirm = confirm

    def process(self, message: str | bytes | Mapping[str, Any]) -> Counter[str]:
        """Parse one SES message and hand each event to the processor; outcome label → count."""
        outcomes: Counter[str] = Counter()
        for event in parse_ses_message(message):
            outcomes[self.feedback.process(event)] += 1
        return outcomes

    def lambda_event(self, event: Mapping[str, Any]) -> BatchSummary:
        """An SNS → Lambda event. A record that is not a valid SES message is logged and skipped so it
        cannot block the others; a processor failure propagates, and the retried invocation is safe
        because every event is recorded once."""
        # imported here: only the SNS-triggered function needs the Powertools models
        from aws_lambda_powertools.utilities.parser.models import SnsRecordModel

        records = event.get("Records")
        if not isinstance(records, list):
            raise SesEventError("not an SNS event: no Records list")
        summary = BatchSummary(records=len(records))
        outcomes: Counter[str] = Counter()
        for index, raw in enumerate(records):
            sns = raw.get("Sns") if isinstance(raw, dict) else None
            sns_type = sns.get("Type") if isinstance(sns, dict) else None
            if sns_type is not None and sns_type != "Notification":
                # SNS → Lambda only ever delivers notifications; anything else is not for this path
                logger.warning("record %d: SNS %s ignored", index, sns_type)
                summary.ignored += 1
                continue
            try:
                record = SnsRecordModel.model_validate(raw)
                if not isinstance(record.Sns.Message, str):
                    raise SesEventError("SNS Message is not text")
                found = self.process(record.Sns.Message)
            except (ValidationError, SesEventError) as exc:
                logger.error("record %d: skipped, not a valid SES event: %s", index, _one_line(exc))
                summary.invalid += 1
                continue
            summary.events += sum(found.values())
            outcomes.update(found)
        summary.outcomes = dict(outcomes)
        logger.info("SES events: %s", summary.model_dump_json())
        return summary

    def https_delivery(self, body: bytes | str) -> SnsReceipt:
        """One POST from an SNS HTTPS subscription. Nothing in it is acted on before it is verified."""
        try:
            message = self.verifier.verify_body(body)
        except SnsVerificationError as exc:
            # worth an operator's attention: a misconfigured topic list, or somebody probing the route
            logger.warning("SNS message refused (%s): %s", exc.reason, exc.detail)
            raise
        if message.Type == "Notification":
            outcomes = self.process(message.Message)
            return SnsReceipt(type=message.Type, status="processed", message_id=message.MessageId,
                              outcomes=dict(outcomes))
        if message.Type == "SubscriptionConfirmation":
            arn = self.confirm(message)
            logger.info("confirmed the SNS subscription to %s: %s", message.TopicArn, arn)
            return SnsReceipt(type=message.Type, status="confirmed", message_id=message.MessageId,
                              subscription_arn=arn or None)
        logger.info("SNS %s for %s ignored", message.Type, message.TopicArn)
        return SnsReceipt(type=message.Type, status="ignored", message_id=message.MessageId)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]
