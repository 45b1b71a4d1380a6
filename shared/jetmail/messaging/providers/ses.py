"""Amazon SES (API v2) delivery of raw MIME messages.

boto3 blocks, so each send runs on a thread of the provider's own pool: its size bounds how many
requests are in flight, and it keeps SES calls from queueing behind (or starving) the DynamoDB
calls that other code runs on the loop's default executor.

Error codes and what they mean for the message:

* throttling (``Throttling``, ``ThrottlingException``, ``TooManyRequestsException``,
  ``MaxSendingRateExceeded``, ``LimitExceededException``) → temporary, ``throttled``;
* the account or configuration set is paused or suspended (``AccountSuspendedException``,
  ``SendingPausedException``) → temporary, ``throttled``, with a long ``retry_after``. Nothing
  is wrong with the message, and failing it for good would fail a whole campaign while an
  operator sorts out the account; the job layer's attempt limit still bounds the retries;
* the message or its sender is refused (``MessageRejected``, ``MailFromDomainNotVerifiedException``,
  ``BadRequestException``, ...) → permanent;
* anything else, including 5xx, timeouts and connection errors → temporary: an unknown answer is
  no proof the message can never go, and retries are bounded.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from jetmail.aws.clients import aws_client
from jetmail.config import Settings
from jetmail.messaging.providers.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    SendResult,
    TemporaryDeliveryError,
)

_THROTTLED = frozenset({
    "Throttling", "ThrottlingException", "TooManyRequestsException", "MaxSendingRateExceeded",
    "LimitExceededException",
})
_PAUSED = frozenset({"AccountSuspendedException", "SendingPausedException"})
_PERMANENT = frozenset({
    "MessageRejected", "MailFromDomainNotVerifiedException", "MailFromDomainNotVerified",
    "BadRequestException", "InvalidParameterValue", "ValidationException",
})
_PAUSED_RETRY_AFTER_S = 300.0

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_TAG_MAX = 256


class SesProvider:
    name = "ses"

    def __init__(self, settings: Settings, *, max_concurrency: int = 16) -> None:
        self._client = aws_client("sesv2", settings)
        self._configuration_set = settings.ses_configuration_set
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="jetmail-ses")

    async def send(self, message: OutboundMessage) -> SendResult:
        request = self._request(message)
        loop = asyncio.get_running_loop()
        try:
            call = functools.partial(self._client.send_email, **request)
            response = await loop.run_in_executor(self._executor, call)
        except ClientError as exc:
            raise _client_error(exc) from None
        except ParamValidationError as exc:
            raise PermanentDeliveryError(f"SES request invalid: {exc}", code="ParamValidationError") from None
        except BotoCoreError as exc:
            raise TemporaryDeliveryError(f"SES unreachable: {exc}", code=type(exc).__name__) from None
        return SendResult(provider=self.name, provider_message_id=response.get("MessageId"),
                          accepted=tuple(message.recipients))

    async def close(self) -> None:
        """Wait for sends in flight; the boto3 client is shared by the process and stays open."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def _request(self, message: OutboundMessage) -> dict[str, Any]:
        if not message.recipients:
            raise PermanentDeliveryError("message has no recipients")
        request: dict[str, Any] = {
            "FromEmailAddress": _ascii_address(message.mail_from),
            # Without a Destination SES sends to every To/Cc/Bcc header address; the envelope decides.
            "Destination": {"ToAddresses": [_ascii_address(r) for r in message.recipients]},
            "Content": {"Raw": {"Data": message.raw}},
        }
        if self._configuration_set:
            request["ConfigurationSetName"] = self._configuration_set
        tags = ses_tags({**message.tags, "message_id": message.tags.get("message_id") or message.message_id})
        if tags:
            request["EmailTags"] = tags
        return request


def ses_tags(values: Mapping[str, str | None]) -> list[dict[str, str]]:
    """SES message tags: names and values cut to ``[A-Za-z0-9_-]`` and 256 characters; empty ones dropped."""
    tags = []
    for name, value in values.items():
        if not value:
            continue
        tags.append({"Name": _tag_text(name), "Value": _tag_text(str(value))})
    return tags


def _tag_text(text: str) -> str:
    return _TAG_UNSAFE.sub("_", text)[:_TAG_MAX]


def _ascii_address(address: str) -> str:
    """SES has no SMTPUTF8: a non-ASCII domain goes as punycode, a non-ASCII local part cannot go at all."""
    if address.isascii():
        return address
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise PermanentDeliveryError(f"SES cannot send to or from a non-ASCII mailbox name: {address}")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        raise PermanentDeliveryError(f"invalid domain in address: {address}") from None


def _client_error(exc: ClientError) -> DeliveryError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    reason = f"SES {code}: {error.get('Message') or exc}"
    if code in _THROTTLED:
        return TemporaryDeliveryError(reason, throttled=True, code=code)
    if code in _PAUSED:
        return TemporaryDeliveryError(reason, throttled=True, retry_after=_PAUSED_RETRY_AFTER_S, code=code)
    if code in _PERMANENT:
        return PermanentDeliveryError(reason, code=code)
    return TemporaryDeliveryError(reason, code=code)
