"""Bounces without SES, end to end: mail leaves with a VERP return path, reports come back over SMTP to
`jetmail bounce-server` (a real process) and go through the one feedback processor; a synchronous 5xx from
the SMTP server is read the same way."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from bounce_reports import DOMAIN, sample
from fastapi.testclient import TestClient

from jetmail.campaigns.ids import campaign_message_id
from jetmail.config import Settings
from jetmail.deliverability.bounces import BounceIntake, verp_address
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, free_port, stop_process, tcp_ready, wait_until
from jetmail.messaging.compose import Recipient
from jetmail.messaging.messages import MessageStatus, SendRequest, new_message_id
from jetmail.messaging.pipeline import Draft, SendPipeline
from jetmail.messaging.providers.smtp import SmtpProvider
from jetmail.services import Services
from jetmail.storage import keys
from stacktools import api_client, stack_env

RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}
REPORT_MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def bounce_settings(services: Services) -> Settings:
    return services.settings.model_copy(update={"bounce_domain": DOMAIN})


@pytest.fixture(scope="module")
def bounce_server(stack: StackState, services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`jetmail bounce-server` as deployed: its own process, on the test stack's tables."""
    port = free_port()
    log = tmp_path_factory.mktemp("bounces") / "bounce-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetmail.cli", "bounce-server", "--host", "127.0.0.1", "--port", str(port)],
            env=stack_env(stack, JETMAIL_BOUNCE_DOMAIN=DOMAIN, JETMAIL_BOUNCE_MAX_BYTES=str(REPORT_MAX_BYTES)),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(tcp_ready(port), timeout=30, what="bounce server", proc=proc, log=log)
    yield port
    stop_process(proc.pid)


def send_through_smtp(services: Services, settings: Settings, to: str) -> str:
    """A recorded transactional message, sent to the sink by the SMTP provider: its id."""
    message_id = new_message_id()
    request = SendRequest.model_validate({"template": "password_reset", "to": to, "context": RESET})
    repo = services.messages.messages
    repo.create(repo.record(message_id, request=request, status=MessageStatus.SENDING))

    async def send() -> None:
        provider = SmtpProvider(settings)
        pipeline = SendPipeline(composer=services.composer, provider=provider, feedback=services.feedback)
        try:
            await pipeline.send(Draft(message_id=message_id, recipient=Recipient(email=to),
                                      version=services.templates.resolve("password_reset", None), context=RESET,
                                      from_addr=settings.default_from))
        finally:
            await provider.close()

    asyncio.run(send())
    return message_id


def deliver(port: int, raw: bytes, *, to: str, mail_from: str = "") -> None:
    """One report over SMTP, as a receiving MTA sends it (null sender); returns once it is processed."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(mail_from, [to], raw)


def bounces_of(services: Services, address: str) -> list[dict[str, object]]:
    return [e for e in services.feedback.events.of_recipient(address) if e["kind"] == "bounce"]


def test_a_dsn_to_the_return_path_suppresses_the_address(services: Services, bounce_settings: Settings,
                                                        bounce_server: int, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a message sent through the SMTP provider with a bounce domain
    to = f"gone-{unique}@example.org"
    message_id = send_through_smtp(services, bounce_settings, to)
    arrived = wait_until(lambda: mailbox.for_recipient(to), timeout=15, what="the message in the sink")
    return_path = arrived[0].mail_from
    assert return_path == verp_address(message_id, signer=services.signer, domain=DOMAIN)
    # WHEN the recipient's server sends its DSN back to that return path
    deliver(bounce_server, sample("rfc3464-failed.eml", message_id=message_id, rcpt=to, verp=return_path),
            to=return_path)
    # THEN the address is suppressed as a hard bounce and the bounce is recorded against the message
    suppression = wait_until(lambda: services.suppressions.get(to), timeout=10, what="suppression")
    assert suppression.reason == "hard_bounce" and suppression.source == "smtp"
    (event,) = bounces_of(services, to)
    assert (event["message_id"], event["bounce_type"], event["source"]) == (message_id, "Permanent", "smtp")
    assert "5.1.1" in str(event["diagnostic"])


def test_forged_reports_change_nothing(services: Services, bounce_server: int, unique: str) -> None:
    # GIVEN a message jetmail sent (recorded), and its genuine return path
    to = f"kept-{unique}@example.org"
    message_id = new_message_id()
    repo = services.messages.messages
    repo.create(repo.record(message_id, request=SendRequest.model_validate(
        {"template": "password_reset", "to": to, "context": RESET}), status=MessageStatus.SENT))
    genuine = verp_address(message_id, signer=services.signer, domain=DOMAIN)
    assert genuine is not None
    local, _, domain = genuine.partition("@")
    tampered = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    other = f"victim-{unique}@example.org"
    # WHEN reports arrive with a bad token, about a message jetmail never sent (no token, a made-up
    # Message-ID), and with the genuine token but naming another address
    deliver(bounce_server, sample("rfc3464-failed.eml", message_id=message_id, rcpt=to, verp=tampered), to=tampered)
    deliver(bounce_server, sample("rfc3464-failed.eml", message_id=new_message_id(), rcpt=to,
                                  verp=f"postmaster@{DOMAIN}"), to=f"postmaster@{DOMAIN}")
    deliver(bounce_server, sample("rfc3464-failed.eml", message_id=message_id, rcpt=other, verp=genuine), to=genuine)
    # THEN (each was processed before its 250) nobody is suppressed and nothing is recorded
    assert services.suppressions.get(to) is None and services.suppressions.get(other) is None
    assert bounces_of(services, to) == [] and bounces_of(services, other) == []
    assert services.messages.messages.get(message_id)["status"] == "sent"


def test_the_bounce_server_is_no_relay_and_has_a_size_limit(bounce_server: int) -> None:
    with smtplib.SMTP("127.0.0.1", bounce_server, timeout=10) as client:
        client.ehlo()
        client.mail("")
        code, text = client.rcpt("someone@example.net")
        assert code == 550 and text.startswith(b"5.1.1") and DOMAIN.encode() in text
        assert client.rcpt(f"bounces+whatever@{DOMAIN.upper()}")[0] == 250
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (REPORT_MAX_BYTES // 1000 + 10))
        assert code == 552 and b"5.3.4" in text


def test_complaints_and_policy_bounces_through_the_intake(services: Services, unique: str) -> None:
    intake = BounceIntake(feedback=services.feedback, signer=services.signer, bounce_domain=DOMAIN)
    repo = services.messages.messages
    hour = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H")
    before = sum(int(v.get("bounced_hard", 0)) for v in services.counters.account("hour", after=hour).values())

    def message(to: str) -> tuple[str, str]:
        message_id = new_message_id()
        repo.create(repo.record(message_id, request=SendRequest.model_validate(
            {"template": "password_reset", "to": to, "context": RESET}), status=MessageStatus.SENT))
        verp = verp_address(message_id, signer=services.signer, domain=DOMAIN)
        assert verp is not None
        return message_id, verp

    # GIVEN a feedback-loop complaint with the recipient redacted, sent to the loop's registered address
    complainer = f"angry-{unique}@example.org"
    message_id, verp = message(complainer)
    outcome = intake.process(sample("arf-redacted.eml", message_id=message_id, rcpt=complainer, verp=verp),
                             envelope_to=[f"fbl@{DOMAIN}"])
    # THEN the message's own recipient is suppressed for the complaint
    assert (outcome.kind, outcome.outcomes) == ("complaint", {"applied": 1})
    assert services.suppressions.get(complainer).reason == "spam_complaint"  # type: ignore[union-attr]
    assert services.messages.messages.get(message_id)["status"] == "complained"

    # GIVEN a policy refusal (5.7.1) and an out-of-office reply
    blocked = f"blocked-{unique}@example.org"
    message_id, verp = message(blocked)
    outcome = intake.process(sample("rfc3464-policy.eml", message_id=message_id, rcpt=blocked, verp=verp),
                             envelope_to=[verp])
    away = intake.process(sample("auto-reply.eml", message_id=message_id, rcpt=blocked, verp=verp), envelope_to=[verp])
    # THEN the policy bounce counts where the reputation monitor reads it but suppresses nobody; the reply is nothing
    assert outcome.outcomes == {"applied": 1} and away.kind == "auto_reply" and away.outcomes == {}
    assert services.suppressions.get(blocked) is None
    after = sum(int(v.get("bounced_hard", 0)) for v in services.counters.account("hour", after=hour).values())
    assert after >= before + 1
    # AND the same report again is a duplicate, applied once
    again = intake.process(sample("rfc3464-policy.eml", message_id=message_id, rcpt=blocked, verp=verp),
                           envelope_to=[verp])
    assert again.outcomes == {"duplicate": 1}


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def test_a_synchronous_550_user_unknown_suppresses(client: TestClient, services: Services, unique: str) -> None:
    # GIVEN an address the SMTP server refuses at RCPT with "550 5.1.1 mailbox unavailable"
    to = f"reject-{unique}@example.com"
    # WHEN a message to it is sent by the worker
    message_id = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                                   "context": RESET}).json()["id"]
    # THEN it fails as before, and the refusal is read as a hard bounce: suppressed, recorded, reported
    wait_until(lambda: client.get(f"/v1/messages/{message_id}").json()["status"] == "failed", timeout=20,
               what="failed")
    suppression = wait_until(lambda: services.suppressions.get(to), timeout=10, what="suppression")
    assert suppression.reason == "hard_bounce"
    (event,) = bounces_of(services, to)
    assert (event["message_id"], event["source"], event["bounce_subtype"]) == (message_id, "smtp", "NoEmail")
    assert client.get(f"/v1/messages/{message_id}").json()["status"] == "failed"


def test_the_bounce_server_needs_its_domain(stack: StackState) -> None:
    env = {k: v for k, v in stack_env(stack).items() if k != "JETMAIL_BOUNCE_DOMAIN"}
    done = subprocess.run([sys.executable, "-m", "jetmail.cli", "bounce-server", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: JETMAIL_BOUNCE_DOMAIN is not set" in done.stderr and "Traceback" not in done.stderr


def test_a_bounce_of_campaign_mail_finds_the_recipient_in_its_batch(services: Services, unique: str) -> None:
    # GIVEN a campaign batch of two recipients, as the planner records it
    campaign_id = f"cmp_{unique:0<16}"[:20]
    recipients = [f"first-{unique}@example.org", f"second-{unique}@example.org"]
    services.table.put(keys.batch(campaign_id, "main", 1).item(recipients=recipients))
    message_id = campaign_message_id(campaign_id, "main", 1, 1)
    verp = verp_address(message_id, signer=services.signer, domain=DOMAIN)
    assert verp is not None
    # WHEN the second recipient's DSN comes back (Exchange's own format, no DSN part)
    intake = BounceIntake(feedback=services.feedback, signer=services.signer, bounce_domain=DOMAIN)
    outcome = intake.process(sample("exchange-ndr.eml", message_id=message_id, rcpt=recipients[1], verp=verp),
                             envelope_to=[verp])
    # THEN that recipient, and only that one, is suppressed
    assert (outcome.kind, outcome.message_id, outcome.outcomes) == ("bounce", message_id, {"applied": 1})
    assert services.suppressions.get(recipients[1]).reason == "hard_bounce"  # type: ignore[union-attr]
    assert services.suppressions.get(recipients[0]) is None
    (event,) = bounces_of(services, recipients[1])
    assert event["campaign_id"] == campaign_id
