"""``POST /sns/ses``: SES events from an SNS HTTPS subscription.

This route takes no API key: SNS cannot send one. Its authentication is the SNS message signature,
checked before anything in the body is used (``jetmail.aws.sns``): the topic must be one of
``JETMAIL_SNS_TOPIC_ARNS``, the signing certificate must come from an SNS host over https, the
message must be fresh, and the signature must match. A message that fails any check is answered
403 and changes nothing; a body that is not an SNS message, or a notification that is not an SES
event, is answered 400. A ``SubscriptionConfirmation`` for an allowed topic is confirmed through
the SNS ``ConfirmSubscription`` API (jetmail never fetches the ``SubscribeURL`` it was sent).

The message type is read from the body, not from the ``x-amz-sns-message-type`` header.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from jetmail.api.auth import services
from jetmail.deliverability.ses_events import SnsReceipt
from jetmail.services import Services

router = APIRouter(tags=["sns"])

_ERROR = {"content": {"application/problem+json": {"example": {
    "type": "https://jetmail.dev/problems/sns-verification-error", "title": "Sns verification error",
    "status": 403, "detail": "signature: ..."}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "not an SNS message, or not an SES event"},
    403: {"description": "signature, certificate, timestamp or topic not trusted; nothing recorded", **_ERROR},
    502: {"description": "SNS refused the subscription confirmation"},
    503: {"description": "the signing certificate could not be fetched; SNS retries"},
}


async def raw_body(request: Request) -> bytes:
    # SNS posts JSON as text/plain: read the bytes, whatever the content type says
    return await request.body()


@router.post("/sns/ses", response_model=SnsReceipt, responses=RESPONSES,
             openapi_extra={"requestBody": {"required": True, "description": "an SNS message (JSON)",
                                            "content": {"text/plain": {"schema": {"type": "string"}}}}})
def receive_sns(
    body: Annotated[bytes, Depends(raw_body)],
    svc: Annotated[Services, Depends(services)],
) -> SnsReceipt:
    """Receive one SNS message carrying SES events (public: the SNS signature is the authentication)."""
    return svc.ses_events.https_delivery(body)
