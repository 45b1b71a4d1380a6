"""The local stack's own services answer on the ports it reports."""

from __future__ import annotations

import smtplib
import urllib.request

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until


def test_smtp_sink_stores_messages_and_indexes_recipients(stack: StackState, mailbox: Mailbox, unique: str) -> None:
    # GIVEN the sink from the local stack
    port = stack.services["smtp"].port
    rcpt = f"sink-{unique}@example.com"
    # WHEN a message is sent over a real SMTP socket
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.sendmail("from@example.com", [rcpt], b"Subject: hi\r\n\r\nbody\r\n")
    # THEN it is listed for that recipient and readable as a message
    wait_until(lambda: len(mailbox.for_recipient(rcpt)) == 1, timeout=5, what="sink index")
    entry = mailbox.for_recipient(rcpt)[0]
    assert mailbox.message(entry.id)["Subject"] == "hi"


def test_sink_hooks_reject_and_defer(stack: StackState, unique: str) -> None:
    port = stack.services["smtp"].port
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        refused = smtp.sendmail("f@example.com", [f"reject-{unique}@example.com", f"ok-{unique}@example.com"],
                                b"Subject: x\r\n\r\nx\r\n")
        assert refused[f"reject-{unique}@example.com"][0] == 550
    deferred = f"defer1-{unique}@example.com"
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        try:
            smtp.sendmail("f@example.com", [deferred], b"Subject: x\r\n\r\nx\r\n")
            raise AssertionError("first attempt should be deferred")
        except smtplib.SMTPRecipientsRefused as exc:
            assert exc.recipients[deferred][0] == 451
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        assert smtp.sendmail("f@example.com", [deferred], b"Subject: x\r\n\r\nx\r\n") == {}


def test_moto_and_nats_answer(stack: StackState) -> None:
    with urllib.request.urlopen(stack.services["moto"].url + "/moto-api/") as resp:  # noqa: S310
        assert resp.status == 200
    assert stack.services["nats"].url.startswith("nats://127.0.0.1:")
