"""SmtpProvider against real SMTP servers on loopback: the stack's sink, and in-process TLS/AUTH servers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from jetmail.config import ConfigError, Settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import free_port, wait_until
from jetmail.providers import (
    OutboundMessage,
    PermanentDeliveryError,
    SendResult,
    SmtpProvider,
    TemporaryDeliveryError,
    make_provider,
)

SettingsWith = Callable[..., Settings]
Outbound = Callable[..., OutboundMessage]


def arrived(mailbox: Mailbox, address: str, *, count: int = 1) -> None:
    wait_until(lambda: len(mailbox.for_recipient(address)) >= count, timeout=10, what=f"mail for {address}")
    assert len(mailbox.for_recipient(address)) == count


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_send_reaches_the_sink(settings: Settings, mailbox: Mailbox, unique: str, outbound: Outbound) -> None:
    # GIVEN a provider on the stack's sink and a built message
    message = outbound(f"hello-{unique}@example.com")

    async def scenario() -> SendResult:
        provider = make_provider(settings)
        try:
            return await provider.send(message)
        finally:
            await provider.close()

    # WHEN it is sent
    result = run(scenario())
    # THEN the sink holds it with our envelope; the result names the Message-ID (the sink gives no queue id)
    arrived(mailbox, f"hello-{unique}@example.com")
    entry = mailbox.for_recipient(f"hello-{unique}@example.com")[0]
    assert entry.mail_from == "sender@example.com"
    assert mailbox.raw(entry.id) == message.raw
    assert result.provider == "smtp"
    assert result.accepted == (f"hello-{unique}@example.com",)
    assert f"<{result.provider_message_id}>" == mailbox.message(entry.id)["Message-ID"]


def test_one_connection_carries_many_messages(settings_with: SettingsWith, mailbox: Mailbox, unique: str,
                                              outbound: Outbound) -> None:
    # GIVEN a pool of one connection
    provider = SmtpProvider(settings_with(smtp_pool_size=1))

    async def scenario() -> None:
        for i in range(20):
            await provider.send(outbound(f"reuse{i}-{unique}@example.com"))
        await provider.close()

    # WHEN 20 messages are sent
    run(scenario())
    # THEN all arrive, over a single SMTP session
    for i in range(20):
        arrived(mailbox, f"reuse{i}-{unique}@example.com")
    assert provider.connections_opened == 1


def test_connection_is_replaced_after_max_messages(settings_with: SettingsWith, mailbox: Mailbox, unique: str,
                                                    outbound: Outbound) -> None:
    # GIVEN at most 5 messages per connection
    provider = SmtpProvider(settings_with(smtp_pool_size=1, smtp_max_messages_per_connection=5))

    async def scenario() -> None:
        for i in range(12):
            await provider.send(outbound(f"rotate{i}-{unique}@example.com"))
        await provider.close()

    # WHEN 12 are sent
    run(scenario())
    # THEN three sessions carried them (5 + 5 + 2)
    for i in range(12):
        arrived(mailbox, f"rotate{i}-{unique}@example.com")
    assert provider.connections_opened == 3


def test_rejected_recipient_is_permanent_and_the_connection_stays_usable(
        settings_with: SettingsWith, mailbox: Mailbox, unique: str, outbound: Outbound) -> None:
    provider = SmtpProvider(settings_with(smtp_pool_size=1))

    async def scenario() -> PermanentDeliveryError:
        with pytest.raises(PermanentDeliveryError) as caught:
            await provider.send(outbound(f"reject-{unique}@example.com"))
        await provider.send(outbound(f"after-reject-{unique}@example.com"))
        await provider.close()
        return caught.value

    # WHEN a 550 recipient is sent to, then a good one
    error = run(scenario())
    # THEN the first fails for good with the server's code and words; the next goes over the same session
    assert error.code == 550
    assert "mailbox unavailable" in error.reason
    arrived(mailbox, f"after-reject-{unique}@example.com")
    assert mailbox.for_recipient(f"reject-{unique}@example.com") == []
    assert provider.connections_opened == 1


def test_deferred_recipient_is_temporary_then_succeeds(settings_with: SettingsWith, mailbox: Mailbox,
                                                       unique: str, outbound: Outbound) -> None:
    provider = SmtpProvider(settings_with(smtp_pool_size=1))
    message = outbound(f"defer1-{unique}@example.com")

    async def scenario() -> TemporaryDeliveryError:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await provider.send(message)
        await provider.send(message)
        await provider.close()
        return caught.value

    # WHEN the first attempt gets 451 and the retry goes through
    error = run(scenario())
    # THEN the first failure is temporary (not throttling) and exactly one copy arrives
    assert error.code == 451 and not error.throttled
    arrived(mailbox, f"defer1-{unique}@example.com")
    assert provider.connections_opened == 1


def test_busy_server_is_throttling(settings_with: SettingsWith, mailbox: Mailbox, unique: str,
                                   outbound: Outbound) -> None:
    provider = SmtpProvider(settings_with(smtp_pool_size=1))

    async def scenario() -> TemporaryDeliveryError:
        with pytest.raises(TemporaryDeliveryError) as caught:
            await provider.send(outbound(f"busy-{unique}@example.com"))
        # 421 closes the session; the next send opens another
        await provider.send(outbound(f"after-busy-{unique}@example.com"))
        await provider.close()
        return caught.value

    error = run(scenario())
    assert error.throttled and error.code == 421
    assert "too many" in error.reason
    arrived(mailbox, f"after-busy-{unique}@example.com")
    assert provider.connections_opened == 2


def test_connection_refused_is_temporary(settings_with: SettingsWith, unique: str,
                                         outbound: Outbound) -> None:
    provider = SmtpProvider(settings_with(smtp_port=free_port()))

    async def scenario() -> None:
        try:
            await provider.send(outbound(f"nobody-{unique}@example.com"))
        finally:
            await provider.close()

    with pytest.raises(TemporaryDeliveryError) as caught:
        run(scenario())
    assert not caught.value.throttled
    assert provider.connections_opened == 0


def test_silent_server_times_out_as_temporary(settings_with: SettingsWith, unique: str,
                                              outbound: Outbound) -> None:
    # GIVEN a port that accepts TCP connections but never greets
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        provider = SmtpProvider(settings_with(smtp_port=listener.getsockname()[1], smtp_timeout_s=0.3))
        started = time.monotonic()
        # WHEN a message is sent THEN it fails as temporary within the timeout
        with pytest.raises(TemporaryDeliveryError):
            run(provider.send(outbound(f"silent-{unique}@example.com")))
        assert time.monotonic() - started < 3


def test_fifty_concurrent_sends_arrive_once_each(settings_with: SettingsWith, mailbox: Mailbox, unique: str,
                                                 outbound: Outbound) -> None:
    provider = SmtpProvider(settings_with(smtp_pool_size=4, smtp_max_messages_per_connection=10))
    addresses = [f"many{i}-{unique}@example.com" for i in range(50)]

    async def scenario() -> list[SendResult]:
        try:
            return await asyncio.gather(*(provider.send(outbound(a)) for a in addresses))
        finally:
            await provider.close()

    # WHEN 50 tasks send at once over a pool of 4
    results = run(scenario())
    # THEN each message arrives exactly once, and no more than 4 sessions were open at a time
    assert sorted(r.accepted[0] for r in results) == sorted(addresses)
    for address in addresses:
        arrived(mailbox, address)
    assert 4 <= provider.connections_opened <= 8  # 50 messages / 10 per session, over 4 slots


def test_smtputf8_recipient(settings: Settings, mailbox: Mailbox, unique: str, outbound: Outbound) -> None:
    address = f"jürgen-{unique}@example.com"

    async def scenario() -> None:
        provider = SmtpProvider(settings)
        await provider.send(outbound(address, smtputf8=True))
        await provider.close()

    run(scenario())
    arrived(mailbox, address)


def test_non_ascii_address_without_smtputf8_is_permanent(settings: Settings, unique: str,
                                                         outbound: Outbound) -> None:
    provider = SmtpProvider(settings)

    async def scenario() -> None:
        try:
            await provider.send(outbound(f"jürgen-{unique}@example.com", smtputf8=False))
        finally:
            await provider.close()

    with pytest.raises(PermanentDeliveryError):
        run(scenario())


def test_idle_connection_closed_by_the_server_is_replaced(settings_with: SettingsWith, unique: str,
                                                          outbound: Outbound,
                                                          local_sink: Callable[..., Any]) -> None:
    # GIVEN a server that drops sessions idle for 0.2 s
    sink = local_sink(idle_timeout_s=0.2)
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))

    async def scenario() -> None:
        await provider.send(outbound(f"idle1-{unique}@example.com"))
        await asyncio.sleep(0.6)
        # WHEN the next message comes after the server hung up
        await provider.send(outbound(f"idle2-{unique}@example.com"))
        await provider.close()

    run(scenario())
    # THEN it still goes, over a new session
    arrived(sink.mailbox, f"idle1-{unique}@example.com")
    arrived(sink.mailbox, f"idle2-{unique}@example.com")
    assert provider.connections_opened == 2


def test_session_timed_out_by_the_server_is_retried_on_a_fresh_one(settings_with: SettingsWith, unique: str,
                                                                   outbound: Outbound,
                                                                   local_sink: Callable[..., Any]) -> None:
    # GIVEN a server that answers 421 to the second MAIL of a session (as after its idle timeout)
    sink = local_sink(one_message_per_session=True)
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))

    async def scenario() -> None:
        for i in range(3):
            await provider.send(outbound(f"timedout{i}-{unique}@example.com"))
        await provider.close()

    # WHEN three messages go over the pool THEN each arrives once, each over its own session,
    # and the 421 never reaches the caller (nothing had been accepted on the old session)
    run(scenario())
    for i in range(3):
        arrived(sink.mailbox, f"timedout{i}-{unique}@example.com")
    assert provider.connections_opened == 3


# aiosmtpd does not see implicit TLS as TLS, so that server allows AUTH "without" it, and warns
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mode", ["starttls", "implicit_tls"])
def test_tls_and_auth(mode: str, settings_with: SettingsWith, unique: str, outbound: Outbound,
                      local_sink: Callable[..., Any], client_tls: ssl.SSLContext,
                      smtp_credentials: tuple[str, str]) -> None:
    # GIVEN a server that requires TLS and AUTH
    sink = local_sink(starttls=mode == "starttls", implicit_tls=mode == "implicit_tls", auth=True)
    settings = settings_with(smtp_port=sink.port, smtp_starttls=mode == "starttls",
                             smtp_use_tls=mode == "implicit_tls", smtp_username=smtp_credentials[0],
                             smtp_password=smtp_credentials[1])
    provider = SmtpProvider(settings, tls_context=client_tls)

    async def scenario() -> None:
        for i in range(3):
            await provider.send(outbound(f"tls{i}-{unique}@example.com"))
        await provider.close()

    # WHEN messages are sent with the credentials from settings
    run(scenario())
    # THEN they arrive over one authenticated TLS session
    for i in range(3):
        arrived(sink.mailbox, f"tls{i}-{unique}@example.com")
    assert provider.connections_opened == 1


def test_wrong_password_is_temporary_and_not_echoed(settings_with: SettingsWith, unique: str,
                                                    outbound: Outbound,
                                                    local_sink: Callable[..., Any],
                                                    client_tls: ssl.SSLContext,
                                                    smtp_credentials: tuple[str, str]) -> None:
    sink = local_sink(starttls=True, auth=True)
    settings = settings_with(smtp_port=sink.port, smtp_starttls=True, smtp_username=smtp_credentials[0],
                             smtp_password="not-the-password")
    provider = SmtpProvider(settings, tls_context=client_tls)

    async def scenario() -> None:
        try:
            await provider.send(outbound(f"auth-{unique}@example.com"))
        finally:
            await provider.close()
            # the refused session's TLS shutdown finishes on the loop; let it before asyncio.run closes it
            await asyncio.sleep(0.1)

    with pytest.raises(TemporaryDeliveryError) as caught:
        run(scenario())
    # a wrong credential is the operator's to fix, not a reason to fail the message for good
    assert caught.value.code == 535
    assert "not-the-password" not in caught.value.reason
    assert "not-the-password" not in repr(provider.__dict__)


def test_username_without_password_fails_at_start(settings_with: SettingsWith) -> None:
    with pytest.raises(ConfigError, match="JETMAIL_SMTP_PASSWORD"):
        SmtpProvider(settings_with(smtp_username="someone"))
