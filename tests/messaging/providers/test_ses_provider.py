"""SesProvider against the stack's moto server over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from jetmail.aws.clients import aws_client
from jetmail.config import Settings
from jetmail.devstack.stack import free_port
from jetmail.messaging.providers import (
    OutboundMessage,
    PermanentDeliveryError,
    SendResult,
    SesProvider,
    TemporaryDeliveryError,
    make_provider,
)
from jetmail.messaging.providers.ses import ses_tags

SettingsWith = Callable[..., Settings]
Outbound = Callable[..., OutboundMessage]


def send_once(provider: SesProvider, message: OutboundMessage) -> SendResult:
    async def scenario() -> SendResult:
        try:
            return await provider.send(message)
        finally:
            await provider.close()

    result: SendResult = asyncio.run(scenario())
    return result


def test_send_from_a_verified_domain_returns_the_ses_message_id(settings_with: SettingsWith, unique: str,
                                                                 outbound: Outbound) -> None:
    # GIVEN a verified sending domain and a configuration set name
    settings = settings_with(provider="ses", ses_configuration_set="jetmail-events")
    domain = f"verified-{unique}.example.com"
    aws_client("sesv2", settings).create_email_identity(EmailIdentity=domain)
    provider = make_provider(settings)
    assert isinstance(provider, SesProvider)
    message = outbound(f"to-{unique}@example.net", mail_from=f"news@{domain}",
                       tags={"campaign_id": "camp 2024/05", "variant": "B", "category": "newsletter"})
    # WHEN a raw message is sent
    result = send_once(provider, message)
    # THEN SES accepted it and gave its message id
    assert result.provider == "ses"
    assert result.provider_message_id
    assert result.accepted == (f"to-{unique}@example.net",)


def test_unverified_sender_is_permanent(settings_with: SettingsWith, unique: str, outbound: Outbound) -> None:
    # GIVEN a sender nobody verified (moto answers MessageRejected, as SES does)
    provider = SesProvider(settings_with(provider="ses"))
    message = outbound(f"to-{unique}@example.net", mail_from=f"someone@unverified-{unique}.example.com")
    # WHEN it is sent THEN it fails for good, with the SES error code
    with pytest.raises(PermanentDeliveryError) as caught:
        send_once(provider, message)
    assert caught.value.code == "MessageRejected"
    assert "unverified" in caught.value.reason


def test_unreachable_endpoint_is_temporary(settings_with: SettingsWith, unique: str,
                                           outbound: Outbound) -> None:
    provider = SesProvider(settings_with(provider="ses", aws_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TemporaryDeliveryError) as caught:
        send_once(provider, outbound(f"to-{unique}@example.net"))
    assert not caught.value.throttled


def test_non_ascii_mailbox_name_is_permanent_before_calling_ses(settings_with: SettingsWith, unique: str,
                                                                outbound: Outbound) -> None:
    provider = SesProvider(settings_with(provider="ses"))
    with pytest.raises(PermanentDeliveryError, match="non-ASCII"):
        send_once(provider, outbound(f"jürgen-{unique}@example.net", smtputf8=True))


def test_many_concurrent_sends(settings_with: SettingsWith, unique: str, outbound: Outbound) -> None:
    settings = settings_with(provider="ses")
    domain = f"bulk-{unique}.example.com"
    aws_client("sesv2", settings).create_email_identity(EmailIdentity=domain)
    provider = SesProvider(settings, max_concurrency=4)

    async def scenario() -> list[Any]:
        try:
            messages = [outbound(f"r{i}-{unique}@example.net", mail_from=f"n@{domain}") for i in range(20)]
            return await asyncio.gather(*(provider.send(m) for m in messages))
        finally:
            await provider.close()

    results = asyncio.run(scenario())
    assert len({r.provider_message_id for r in results}) == 20


def test_tags_are_cut_to_the_ses_charset() -> None:
    tags = ses_tags({"message_id": "msg_01abc", "campaign_id": "camp 2024/05", "variant": "B",
                     "category": None, "utm.source": "x" * 300})
    assert tags == [
        {"Name": "message_id", "Value": "msg_01abc"},
        {"Name": "campaign_id", "Value": "camp_2024_05"},
        {"Name": "variant", "Value": "B"},
        {"Name": "utm_source", "Value": "x" * 256},
    ]
