"""Bounce and complaint reports read from mail: the VERP return path, the parsers and the classification.

The sample reports in ``bounce_samples/`` are templates: ``${verp}``, ``${rcpt}``, ``${msgid}``,
``${jetmail_id}`` and ``${bounce_domain}`` are filled in per test (see their README).
"""

from __future__ import annotations

import pytest
from bounce_reports import DOMAIN, MESSAGE_ID, SIGNER, sample

from jetmail.deliverability.bounces import classify, parse_report, read_verp, reject_event, verp_address
from jetmail.messaging.tokens import Signer


@pytest.mark.parametrize("message_id", [
    MESSAGE_ID,
    "cm_cmp_0123456789abcdef_main_12_345",
    "cm_cmp_0123456789abcdef-1765000000123_winner_1_0",
    "cm_my-own-campaign_test_3_7",
    "an-id-of-our-own_42",
])
def test_a_return_path_names_its_message_in_64_lowercase_octets(message_id: str) -> None:
    address = verp_address(message_id, signer=SIGNER, domain="Bounces.Example.com")
    assert address is not None
    local, _, domain = address.partition("@")
    assert domain == DOMAIN
    assert local.startswith("bounces+") and len(local) <= 64 and local == local.lower()
    # an MTA that upper- or lower-cases the local part changes nothing
    assert read_verp(local.removeprefix("bounces+").upper(), signer=SIGNER) == message_id


def test_a_return_path_cannot_be_forged() -> None:
    token = verp_address(MESSAGE_ID, signer=SIGNER, domain=DOMAIN).partition("@")[0].removeprefix("bounces+")  # type: ignore[union-attr]
    flipped = token[:10] + ("b" if token[10] != "b" else "c") + token[11:]
    assert read_verp(flipped, signer=SIGNER) is None
    assert read_verp(token, signer=Signer("another-secret-0123456789abcdef")) is None
    assert read_verp(token[:-1], signer=SIGNER) is None
    # the last character's unused low bits changed: the same bytes, but not the token jetmail made
    assert read_verp(token[:-1] + chr(ord(token[-1]) ^ 1), signer=SIGNER) is None
    assert read_verp("not base32 at all!", signer=SIGNER) is None
    # an id too long for 64 octets gets no return path rather than a broken one
    assert verp_address("x" * 80, signer=SIGNER, domain=DOMAIN) is None


@pytest.mark.parametrize(("status", "diagnostic", "expected", "suppresses"), [
    ("5.1.1", "smtp; 550 5.1.1 user unknown", ("Permanent", "NoEmail"), True),
    ("5.1.10", "smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound", ("Permanent", "NoEmail"), True),
    ("4.2.2", "smtp; 452 4.2.2 mailbox full", ("Transient", "MailboxFull"), False),
    ("4.4.1", None, ("Transient", "General"), False),
    ("5.7.1", "smtp; 550 5.7.1 blocked using a block list", ("Permanent", "Policy"), False),
    ("5.7.26", "smtp; 550 5.7.26 unauthenticated mail is prohibited", ("Permanent", "Policy"), False),
    ("5.3.4", None, ("Transient", "MessageTooLarge"), False),
    ("5.0.0", None, ("Permanent", "General"), True),
    (None, "550 Requested action not taken: mailbox unavailable, no such user", ("Permanent", "NoEmail"), True),
    (None, "552 Mailbox full, over quota", ("Transient", "MailboxFull"), False),
    (None, "something odd happened", ("Undetermined", "General"), False),
])
def test_hard_or_soft_comes_from_the_status_code_then_the_wording(
        status: str | None, diagnostic: str | None, expected: tuple[str, str], suppresses: bool) -> None:
    found = classify(status, diagnostic)
    assert (found.bounce_type, found.subtype) == expected
    assert found.suppresses is suppresses


@pytest.mark.parametrize(("name", "kind", "bounce"), [
    ("rfc3464-failed.eml", "bounce", ("Permanent", "NoEmail")),
    ("rfc3464-policy.eml", "bounce", ("Permanent", "Policy")),
    ("rfc3464-delayed.eml", "delay", None),
    ("gmail-style.eml", "bounce", ("Permanent", "NoEmail")),
    ("exchange-ndr.eml", "bounce", ("Permanent", "NoEmail")),
    ("qmail-bounce.eml", "bounce", ("Permanent", "NoEmail")),
])
def test_bounce_reports_are_read_per_recipient(name: str, kind: str, bounce: tuple[str, str] | None) -> None:
    report = parse_report(sample(name))
    assert report.kind == kind
    (finding,) = report.findings
    assert finding.recipient == "user@example.org"
    if bounce is not None:
        assert finding.classification is not None
        assert (finding.classification.bounce_type, finding.classification.subtype) == bounce
    # the return path it was sent to is where the message is found
    assert read_verp(report.verp_addresses[0].partition("@")[0].removeprefix("bounces+"), signer=SIGNER) == MESSAGE_ID


def test_complaints_are_read_with_or_without_the_recipient() -> None:
    arf = parse_report(sample("rfc5965-abuse.eml"))
    assert arf.kind == "complaint"
    assert [(f.recipient, f.complaint_type, f.user_agent) for f in arf.findings] == [
        ("user@example.org", "abuse", "SomeGenerator/1.0")]
    redacted = parse_report(sample("arf-redacted.eml"))
    assert redacted.kind == "complaint" and [f.recipient for f in redacted.findings] == [None]
    # sent to the feedback loop's address, not the return path: the token is in the original's Return-Path
    assert read_verp(redacted.verp_addresses[0].partition("@")[0].removeprefix("bounces+"),
                     signer=SIGNER) == MESSAGE_ID
    assert redacted.original_ids[0] == MESSAGE_ID


@pytest.mark.parametrize("name", ["auto-reply.eml", "out-of-office.eml", "challenge-response.eml"])
def test_auto_replies_and_challenges_are_not_bounces(name: str) -> None:
    report = parse_report(sample(name))
    assert report.kind == "auto_reply"
    assert report.findings == []


def test_garbage_is_unrecognised_not_an_error() -> None:
    for raw in (b"", b"\x00\xff" * 100, b"Subject: hi\r\n\r\nhello", b"Content-Type: multipart/report\r\n\r\n--"):
        assert parse_report(raw).kind == "unrecognised"


def test_a_synchronous_reject_is_a_bounce_only_when_permanent() -> None:
    hard = reject_event(message_id=MESSAGE_ID, recipient="User@Example.org", code=550,
                        text="5.1.1 <user@example.org>: Recipient address rejected: User unknown")
    assert hard is not None
    assert (hard.recipient, hard.bounce_type, hard.bounce_subtype, hard.source) == (
        "user@example.org", "Permanent", "NoEmail", "smtp")
    policy = reject_event(message_id=MESSAGE_ID, recipient="user@example.org", code=554,
                          text="5.7.1 Message rejected as spam")
    assert policy is not None and (policy.bounce_type, policy.bounce_subtype) == ("Permanent", "Policy")
    assert reject_event(message_id=MESSAGE_ID, recipient="user@example.org", code=451, text="4.3.0 later") is None
