"""SmtpProvider against real SMTP servers on loopback: the stack's sink, and in-process TLS/AUTH servers."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from jetmail.config import ConfigError, Settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.smtp_sink import SinkHandler
from jetmail.devstack.stack import free_port, wait_until
from jetmail.messaging.providers import (
    OutboundMessage,
    PermanentDeliveryError,
    SendResult,
    SmtpProvider,
    TemporaryDeliveryError,
    make_provider,
)
from postfix import private_postfix

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


# ---- RFC 2920 pipelining

class _Refuses(SinkHandler):
    """The sink, answering a message's end of data with 451 or 554 for ``data451-`` / ``data554-`` recipients."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        local = envelope.rcpt_tos[0].split("@")[0]
        if local.startswith("data451-"):
            return "451 4.3.0 queue full, try later"
        if local.startswith("data554-"):
            return "554 5.6.0 content rejected"
        return await super().handle_DATA(server, session, envelope)


class _HoldsHeld(SinkHandler):
    """The sink, holding the end of data of ``held-`` recipients until ``release`` is set."""

    release = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if envelope.rcpt_tos[0].startswith("held-"):
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return await super().handle_DATA(server, session, envelope)


def test_a_transactional_message_never_waits_for_campaign_connections(settings_with: SettingsWith, unique: str,
                                                                       outbound: Outbound,
                                                                       local_sink: Callable[..., Any]) -> None:
    # GIVEN a pool of one connection per lane, and campaign sends the server holds
    sink = local_sink(handler=_HoldsHeld)
    _HoldsHeld.release.clear()
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))
    held = [f"held-{n}-{unique}@example.com" for n in range(3)]

    async def scenario() -> list[str]:
        finished: list[str] = []

        async def send(message: OutboundMessage) -> None:
            await provider.send(message)
            finished.append(message.recipients[0])

        campaign = [asyncio.create_task(send(dataclasses.replace(outbound(a), lane="marketing"))) for a in held]
        await asyncio.sleep(0)
        # WHEN a transactional message is sent while they wait
        await send(outbound(f"reset-{unique}@example.com"))
        _HoldsHeld.release.set()
        await asyncio.gather(*campaign)
        await provider.close()
        return finished

    finished = run(scenario())
    # THEN it went first, over its own connection, and every campaign message still arrived once
    assert finished[0] == f"reset-{unique}@example.com" and sorted(finished[1:]) == sorted(held)
    for address in [*held, f"reset-{unique}@example.com"]:
        arrived(sink.mailbox, address)


class _ScriptedServer(asyncio.Protocol):
    """A bare SMTP server for one scenario. With ``pipelining`` it offers PIPELINING and answers the
    commands of a transaction only once DATA is in: a client that waits for each reply stalls. Without,
    it answers 503 to a command that arrived together with another (a server that does not pipeline)."""

    def __init__(self, *, pipelining: bool, data_reply: bytes = b"354 go ahead") -> None:
        self.pipelining = pipelining
        self.data_reply = data_reply
        self.buffer = b""
        self.held: list[bytes] = []
        self.in_data = False
        self.messages: list[bytes] = []
        self.batched_commands = 0
        self.bodies_followed = 0  # bodies whose end came in one read with the next transaction's MAIL
        self.connections = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer, self.held, self.in_data = b"", [], False
        self.connections += 1
        transport.write(b"220 scripted ESMTP\r\n")

    def body_received(self, body: bytes) -> bool:
        """Keep a body; False to drop the connection without a reply instead."""
        self.messages.append(body)
        return True

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if self.in_data:
            if b"\r\n.\r\n" not in self.buffer:
                return
            body, _, self.buffer = self.buffer.partition(b"\r\n.\r\n")
            self.bodies_followed += self.buffer.startswith(b"MAIL")
            self.in_data = False
            if not self.body_received(body + b"\r\n"):
                self.transport.close()
                return
            self.transport.write(b"250 2.0.0 Ok: queued as SCRIPTED1\r\n")
        lines = self.buffer.split(b"\r\n")
        self.buffer = lines.pop()
        if len(lines) > 1:
            self.batched_commands += 1
        for index, line in enumerate(lines):
            verb = line[:4].upper()
            if not self.pipelining and len(lines) > 1:
                self.transport.write(b"503 5.5.0 commands sent before their replies\r\n")
            elif verb == b"EHLO":
                extra = b"250-PIPELINING\r\n" if self.pipelining else b""
                self.transport.write(b"250-scripted\r\n" + extra + b"250 8BITMIME\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                self.held.append(b"250 2.1.0 Ok\r\n")
                if not self.pipelining:
                    self.transport.write(self.held.pop())
            elif verb == b"DATA":
                self.transport.write(b"".join(self.held) + self.data_reply + b"\r\n")
                self.held = []
                self.in_data = self.data_reply.startswith(b"354")
            elif verb in (b"RSET", b"NOOP"):
                self.transport.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
            if self.in_data:
                self.buffer = b"\r\n".join([*lines[index + 1:], self.buffer])
                if self.buffer:
                    self.data_received(b"")
                return


async def _serve(server: _ScriptedServer) -> tuple[asyncio.Server, int]:
    listener = await asyncio.get_running_loop().create_server(lambda: server, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


def test_pipelined_group_is_one_write_and_the_body_arrives_intact(settings_with: SettingsWith, unique: str,
                                                                  outbound: Outbound) -> None:
    # GIVEN a server that offers PIPELINING and replies to MAIL and RCPT only once DATA has come too
    server = _ScriptedServer(pipelining=True)
    body = "first line\n.a line that starts with a period\n..two\nlast\n"

    async def scenario() -> list[SendResult]:
        listener, port = await _serve(server)
        provider = SmtpProvider(settings_with(smtp_port=port, smtp_pool_size=1, smtp_timeout_s=2))
        try:
            return [await provider.send(outbound(f"pipe{i}-{unique}@example.com", body=body)) for i in range(3)]
        finally:
            await provider.close()
            listener.close()

    # WHEN three messages are sent (a client waiting for each reply would time out here)
    results = run(scenario())
    # THEN each went out as one MAIL+RCPT+DATA write, over one session, with its body unchanged
    assert [r.provider_message_id for r in results] == ["SCRIPTED1"] * 3
    assert server.batched_commands >= 3
    assert len(server.messages) == 3
    stuffed = server.messages[0].replace(b"\r\n..", b"\r\n.")
    assert b"\r\n.a line that starts with a period\r\n..two\r\n" in stuffed
    assert stuffed.endswith(b"last\r\n")


def test_pipelining_is_not_used_when_the_server_does_not_offer_it(settings_with: SettingsWith, unique: str,
                                                                   outbound: Outbound) -> None:
    # GIVEN a server without PIPELINING that refuses commands sent ahead of their replies
    server = _ScriptedServer(pipelining=False)

    async def scenario() -> None:
        listener, port = await _serve(server)
        provider = SmtpProvider(settings_with(smtp_port=port, smtp_pool_size=1, smtp_timeout_s=2))
        try:
            for i in range(2):
                await provider.send(outbound(f"lockstep{i}-{unique}@example.com"))
        finally:
            await provider.close()
            listener.close()

    # WHEN messages are sent THEN they go one command per round trip, and arrive
    run(scenario())
    assert server.batched_commands == 0
    assert len(server.messages) == 2


def test_pipelining_off_in_settings_sends_one_command_at_a_time(settings_with: SettingsWith, unique: str,
                                                                outbound: Outbound) -> None:
    # GIVEN a server that offers PIPELINING, and a provider told not to use it
    server = _ScriptedServer(pipelining=True)

    async def scenario() -> None:
        listener, port = await _serve(server)
        provider = SmtpProvider(settings_with(smtp_port=port, smtp_pipelining=False, smtp_timeout_s=0.5))
        try:
            await provider.send(outbound(f"nopipe-{unique}@example.com"))
        finally:
            await provider.close()
            listener.close()

    # WHEN a message is sent THEN the client waits for MAIL's reply, which this server holds: a timeout
    with pytest.raises(TemporaryDeliveryError):
        run(scenario())
    assert server.batched_commands == 0


@pytest.mark.parametrize(("reply", "error", "code"), [
    (b"451 4.3.0 try again later", TemporaryDeliveryError, 451),
    (b"554 5.5.1 no valid recipients", PermanentDeliveryError, 554),
])
def test_pipelined_data_command_refused(reply: bytes, error: type[Exception], code: int,
                                        settings_with: SettingsWith, unique: str, outbound: Outbound) -> None:
    # GIVEN a pipelining server that accepts MAIL and RCPT, then refuses the DATA command itself
    server = _ScriptedServer(pipelining=True, data_reply=reply)

    async def scenario() -> SmtpProvider:
        listener, port = await _serve(server)
        provider = SmtpProvider(settings_with(smtp_port=port, smtp_pool_size=1, smtp_timeout_s=2))
        try:
            for i in range(2):
                with pytest.raises(error) as caught:
                    await provider.send(outbound(f"refused{i}-{unique}@example.com"))
                assert caught.value.code == code  # type: ignore[attr-defined]
                assert "DATA refused" in str(caught.value)
        finally:
            await provider.close()
            listener.close()
        return provider

    # WHEN two messages are sent THEN each fails with the DATA reply, no body is sent, the session is reused
    provider = run(scenario())
    assert server.messages == []
    assert provider.connections_opened == 1


@pytest.mark.parametrize(("prefix", "error", "code"), [
    ("data451", TemporaryDeliveryError, 451),
    ("data554", PermanentDeliveryError, 554),
])
def test_pipelined_end_of_data_refused(prefix: str, error: type[Exception], code: int, settings_with: SettingsWith,
                                       unique: str, outbound: Outbound, local_sink: Callable[..., Any]) -> None:
    # GIVEN the sink (which pipelines), refusing some messages once their data is in
    sink = local_sink(handler=_Refuses)
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))

    async def scenario() -> Exception:
        with pytest.raises(error) as caught:
            await provider.send(outbound(f"{prefix}-{unique}@example.com"))
        await provider.send(outbound(f"after-{prefix}-{unique}@example.com"))
        await provider.close()
        return caught.value

    # WHEN a refused message is followed by a good one
    failure = run(scenario())
    # THEN the first fails with the server's code, nothing of it is stored, the next one arrives on the same session
    assert failure.code == code  # type: ignore[attr-defined]
    assert "DATA refused" in str(failure)
    arrived(sink.mailbox, f"after-{prefix}-{unique}@example.com")
    assert sink.mailbox.for_recipient(f"{prefix}-{unique}@example.com") == []
    assert provider.connections_opened == 1


def test_pipelined_refused_recipient_among_several(settings_with: SettingsWith, unique: str,
                                                   local_sink: Callable[..., Any], outbound: Outbound) -> None:
    # GIVEN the sink (which pipelines) and a message to three recipients, the second of which it refuses
    sink = local_sink()
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))
    recipients = [f"one-{unique}@example.com", f"reject-{unique}@example.com", f"three-{unique}@example.com"]
    template = outbound(recipients[0])
    message = OutboundMessage(mail_from=template.mail_from, recipients=recipients, raw=template.raw,
                              message_id=template.message_id)

    async def scenario() -> PermanentDeliveryError:
        with pytest.raises(PermanentDeliveryError) as caught:
            await provider.send(message)
        await provider.send(outbound(f"next-{unique}@example.com"))
        await provider.close()
        return caught.value

    # WHEN it is sent, then another message
    error = run(scenario())
    # THEN it fails for good with the refusal, nobody gets it, and the session carries the next message
    assert error.code == 550 and "RCPT TO refused" in error.reason
    arrived(sink.mailbox, f"next-{unique}@example.com")
    for address in recipients:
        assert sink.mailbox.for_recipient(address) == []
    assert provider.connections_opened == 1


def test_the_next_transaction_follows_a_body_in_its_write(settings_with: SettingsWith, unique: str,
                                                           outbound: Outbound) -> None:
    # GIVEN a pipelining server, a pool of one connection, and campaign messages
    server = _ScriptedServer(pipelining=True)

    def campaign(address: str) -> OutboundMessage:
        return dataclasses.replace(outbound(address), lane="marketing")

    async def scenario() -> tuple[list[SendResult], int]:
        listener, port = await _serve(server)
        provider = SmtpProvider(settings_with(smtp_port=port, smtp_pool_size=1, smtp_timeout_s=2))
        try:
            results = await asyncio.gather(*(provider.send(campaign(f"follow{i}-{unique}@example.com"))
                                             for i in range(5)))
            return list(results), provider.connections_opened
        finally:
            await provider.close()
            listener.close()

    # WHEN five messages are sent at once
    results, opened = run(scenario())
    # THEN each arrived once over one session, and a message's MAIL, RCPT and DATA went in the write of the
    # body before it (RFC 2920 3.2), without waiting for that body's reply
    assert [r.provider_message_id for r in results] == ["SCRIPTED1"] * 5
    assert len(server.messages) == 5 and opened == 1
    assert server.bodies_followed >= 1


def test_a_refused_body_does_not_touch_the_transaction_after_it(settings_with: SettingsWith, unique: str,
                                                               outbound: Outbound,
                                                               local_sink: Callable[..., Any]) -> None:
    # GIVEN the sink refusing one campaign message's data, one connection, and a message sent right behind it
    sink = local_sink(handler=_Refuses)
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))

    async def scenario() -> list[Any]:
        try:
            return await asyncio.gather(*(provider.send(dataclasses.replace(outbound(address), lane="marketing"))
                                          for address in (f"data554-{unique}@example.com",
                                                          f"behind-{unique}@example.com")),
                                        return_exceptions=True)
        finally:
            await provider.close()

    # WHEN both are sent at once
    refused, behind = run(scenario())
    # THEN the first fails with its own reply, the second arrives, on the same session
    assert isinstance(refused, PermanentDeliveryError) and refused.code == 554
    assert isinstance(behind, SendResult)
    arrived(sink.mailbox, f"behind-{unique}@example.com")
    assert sink.mailbox.for_recipient(f"data554-{unique}@example.com") == []
    assert provider.connections_opened == 1


class _DropsAfterFirstBody(_ScriptedServer):
    """Closes its first session on the first body, unanswered; later sessions are served as usual."""

    def body_received(self, body: bytes) -> bool:
        if self.connections == 1:
            return False
        return super().body_received(body)


def test_connection_lost_after_a_body_sends_the_next_message_on_a_fresh_one(settings_with: SettingsWith,
                                                                           unique: str, outbound: Outbound) -> None:
    # GIVEN a server that drops the session with a body unanswered, after the next MAIL, RCPT and DATA came
    server = _DropsAfterFirstBody(pipelining=True)

    async def scenario() -> tuple[list[Any], int]:
        listener, port = await _serve(server)
        provider = SmtpProvider(settings_with(smtp_port=port, smtp_pool_size=1, smtp_timeout_s=2))
        try:
            results = await asyncio.gather(*(provider.send(dataclasses.replace(outbound(address), lane="marketing"))
                                             for address in (f"lost-{unique}@example.com",
                                                             f"next-{unique}@example.com")),
                                           return_exceptions=True)
            return list(results), provider.connections_opened
        finally:
            await provider.close()
            listener.close()

    # WHEN two messages are sent at once
    (lost, after), opened = run(scenario())
    # THEN the first is temporary (its body may have been taken), and the second, of which no body was sent,
    # went once over a new session
    assert server.bodies_followed == 1
    assert isinstance(lost, TemporaryDeliveryError) and "DATA" in str(lost)
    assert isinstance(after, SendResult)
    assert len(server.messages) == 1 and server.connections == 2 and opened == 2
    assert f"next-{unique}@example.com".encode() in server.messages[0]


class _HoldsUntilTold(SinkHandler):
    """The sink, holding the end of data of ``slow-`` recipients until ``release``; ``holding`` once it does."""

    holding = threading.Event()
    release = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if envelope.rcpt_tos[0].startswith("slow-"):
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize("lane", ["marketing", "transactional"])
def test_a_body_awaiting_its_reply_and_the_next_send(lane: str, settings_with: SettingsWith, unique: str,
                                                    outbound: Outbound, local_sink: Callable[..., Any]) -> None:
    # GIVEN a campaign message whose end of data the server holds, on the one marketing connection
    sink = local_sink(handler=_HoldsUntilTold)
    _HoldsUntilTold.holding.clear()
    _HoldsUntilTold.release.clear()
    provider = SmtpProvider(settings_with(smtp_port=sink.port, smtp_pool_size=1))
    slow = dataclasses.replace(outbound(f"slow-{lane}-{unique}@example.com"), lane="marketing")
    other = dataclasses.replace(outbound(f"other-{lane}-{unique}@example.com"), lane=lane)

    async def scenario() -> bool:
        held = asyncio.create_task(provider.send(slow))
        await asyncio.to_thread(_HoldsUntilTold.holding.wait, 10)
        # WHEN its sender gives up waiting (cancelled), and another message is sent
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        sending = asyncio.create_task(provider.send(other))
        done, _ = await asyncio.wait([sending], timeout=1)
        _HoldsUntilTold.release.set()
        await sending
        await provider.close()
        return bool(done)

    finished_while_held = run(scenario())
    # THEN the session stays in step: both arrive once. A campaign message takes the connection and goes right
    # after the held one; a transactional one never waits behind it, on a session of its own
    arrived(sink.mailbox, slow.recipients[0])
    arrived(sink.mailbox, other.recipients[0])
    if lane == "marketing":
        assert provider.connections_opened == 1 and not finished_while_held
    else:
        assert provider.connections_opened == 2 and finished_while_held


def test_a_connection_is_retired_once_its_last_reply_came(settings_with: SettingsWith, mailbox: Mailbox,
                                                          unique: str, outbound: Outbound) -> None:
    # GIVEN one connection of at most 2 messages, and campaign messages
    provider = SmtpProvider(settings_with(smtp_pool_size=1, smtp_max_messages_per_connection=2))

    async def scenario() -> None:
        await asyncio.gather(*(provider.send(dataclasses.replace(outbound(f"retire{i}-{unique}@example.com"),
                                                                 lane="marketing")) for i in range(5)))
        await provider.close()

    # WHEN five are sent at once THEN each arrives once, over three sessions (2 + 2 + 1)
    run(scenario())
    for i in range(5):
        arrived(mailbox, f"retire{i}-{unique}@example.com")
    assert provider.connections_opened == 3


def test_campaign_mail_pipelined_through_a_real_postfix_arrives_once_each(settings_with: SettingsWith, unique: str,
                                                                         outbound: Outbound) -> None:
    # GIVEN a private Postfix (its smtpd offers PIPELINING) relaying a domain to an SMTP receiver, and one connection
    relay_domain = "relay.jetmail-test.example.net"
    received: list[str] = []

    class Keep:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            received.extend(envelope.rcpt_tos)
            return "250 OK"

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    addresses = [f"pf{i}-{unique}@{relay_domain}" for i in range(20)]
    try:
        with private_postfix(relay_domain=relay_domain, relay_to=("127.0.0.1", port)) as postfix:
            provider = SmtpProvider(settings_with(smtp_host="127.0.0.1", smtp_port=postfix.port, smtp_pool_size=1))

            async def scenario() -> list[SendResult]:
                try:
                    return list(await asyncio.gather(*(
                        provider.send(dataclasses.replace(outbound(a), lane="marketing")) for a in addresses)))
                finally:
                    await provider.close()

            # WHEN 20 campaign messages are sent at once, each one's commands behind the previous one's body
            results = run(scenario())
            wait_until(lambda: len(received) >= len(addresses), timeout=60, what="mail relayed by Postfix")
            log = postfix.log()
    finally:
        controller.stop()
    # THEN Postfix queued each one (a queue id each) over one session, without complaint, and relayed each once
    assert len({r.provider_message_id for r in results}) == len(addresses)
    assert provider.connections_opened == 1
    assert "pipelining" not in log.lower()
    assert sorted(received) == sorted(addresses)


def test_sink_offers_pipelining(settings: Settings) -> None:
    # GIVEN the stack's sink WHEN a client says EHLO THEN PIPELINING is among its extensions
    async def scenario() -> bool:
        client = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, local_hostname="test.local")
        await client.connect()
        try:
            return client.supports_extension("pipelining")
        finally:
            await client.quit()

    assert run(scenario())
