"""The local SES mailbox simulator: what SES would report for its simulator addresses, without SES.

When ``JETMAIL_SES_SIMULATOR`` is on (the local stack turns it on), mail accepted for
``success@``, ``bounce@``, ``complaint@``, ``ooto@`` or ``suppressionlist@`` at
``simulator.amazonses.com`` (or at ``JETMAIL_SIMULATOR_DOMAIN``) produces the SES notifications
SES sends for them, in SES's own JSON format, fed through the same parser and processor as real
SNS deliveries. So the whole feedback loop (bounce → suppression → cancelled follow-ups) runs on
one machine.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from jetmail.config import Settings

SES_SIMULATOR_DOMAIN = "simulator.amazonses.com"
OUTCOMES = ("success", "bounce", "complaint", "ooto", "suppressionlist")


def outcome_for(address: str, *, local_domain: str | None) -> str | None:
    local, _, domain = address.lower().partition("@")
    if domain not in {SES_SIMULATOR_DOMAIN, (local_domain or "").lower()}:
        return None
    local = local.split("+", 1)[0]  # bounce+anything@ keeps its meaning, as with SES
    return local if local in OUTCOMES else None


def _mail(*, recipient: str, source: str, provider_message_id: str, tags: dict[str, str], at: str) -> dict[str, Any]:
    return {
        "timestamp": at, "source": source, "sourceArn": "arn:aws:ses:us-east-1:000000000000:identity/local",
        "sendingAccountId": "000000000000", "messageId": provider_message_id, "destination": [recipient],
        "headersTruncated": False, "headers": [{"name": "X-Jetmail-Message-Id", "value": tags.get("message_id", "")}],
        "tags": {k: [v] for k, v in tags.items()},
    }


def notifications(outcome: str, *, recipient: str, source: str, provider_message_id: str,
                  tags: dict[str, str], now: datetime | None = None) -> list[dict[str, Any]]:
    """The SES notifications (``notificationType`` format) SES sends for a simulator address."""
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    mail = _mail(recipient=recipient, source=source, provider_message_id=provider_message_id, tags=tags, at=at)
    feedback_id = f"{provider_message_id}-{secrets.token_hex(4)}-000000"
    delivery = {"notificationType": "Delivery", "mail": mail, "delivery": {
        "timestamp": at, "processingTimeMillis": 420, "recipients": [recipient], "smtpResponse": "250 2.6.0 OK",
        "remoteMtaIp": "127.0.0.1", "reportingMTA": "a8-1.smtp-out.amazonses.com"}}
    if outcome in ("success", "ooto"):
        return [delivery]
    if outcome == "bounce":
        return [{"notificationType": "Bounce", "mail": mail, "bounce": {
            "bounceType": "Permanent", "bounceSubType": "General", "timestamp": at, "feedbackId": feedback_id,
            "reportingMTA": "dsn; a8-1.smtp-out.amazonses.com",
            "bouncedRecipients": [{"emailAddress": recipient, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}}]
    if outcome == "suppressionlist":
        return [{"notificationType": "Bounce", "mail": mail, "bounce": {
            "bounceType": "Permanent", "bounceSubType": "OnAccountSuppressionList", "timestamp": at,
            "feedbackId": feedback_id, "reportingMTA": "dns; amazonses.com",
            "bouncedRecipients": [{"emailAddress": recipient, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "Amazon SES did not send the message to this address because "
                                                     "it is on the suppression list for your account."}]}}]
    if outcome == "complaint":
        return [delivery, {"notificationType": "Complaint", "mail": mail, "complaint": {
            "complainedRecipients": [{"emailAddress": recipient}], "timestamp": at, "feedbackId": feedback_id,
            "complaintFeedbackType": "abuse", "userAgent": "Amazon SES Mailbox Simulator"}}]
    raise ValueError(f"unknown simulator outcome {outcome!r}")


class Simulator:
    """Called after the provider accepted a message; feeds the simulated SES notifications back."""

    def __init__(self, settings: Settings, *, feedback: Any) -> None:
        self.enabled = settings.ses_simulator
        self.local_domain = settings.simulator_domain
        self.feedback = feedback

    def simulates(self, recipient: str) -> bool:
        """Whether a send to ``recipient`` has simulated notifications to feed back (a simulator address)."""
        return self.enabled and outcome_for(recipient, local_domain=self.local_domain) is not None

    def after_send(self, *, recipient: str, source: str, message_id: str, provider_message_id: str | None,
                   category: str, campaign_id: str | None = None, variant: str | None = None) -> int:
        if not self.enabled:
            return 0
        outcome = outcome_for(recipient, local_domain=self.local_domain)
        if outcome is None:
            return 0
        from jetmail.deliverability.ses_events import parse_ses_message

        tags = {"message_id": message_id, "category": category}
        if campaign_id:
            tags["campaign_id"] = campaign_id
        if variant:
            tags["variant"] = variant
        processed = 0
        for body in notifications(outcome, recipient=recipient, source=source,
                                  provider_message_id=provider_message_id or f"local-{secrets.token_hex(8)}",
                                  tags=tags):
            for event in parse_ses_message(body):
                self.feedback.process(event.model_copy(update={"source": "simulator"}))
                processed += 1
        return processed
