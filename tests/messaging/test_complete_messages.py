"""Complete transactional messages end to end: inline content, cc/bcc, custom headers, metadata and tags,
attachments and inline images, refusals, batch sending. HTTP API → JetStream → worker → real SMTP sink."""

from __future__ import annotations

import base64
import email
import email.policy
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.messaging.messages import AttachmentIn, sanitise_filename
from jetmail.messaging.mime import HeaderInjectionError, MimeAttachment, build_message, check_custom_headers
from jetmail.services import Services
from stacktools import api_client

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def wait_status(client: TestClient, message_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    wait_until(lambda: client.get(f"/v1/messages/{message_id}").json()["status"] == status, timeout=timeout,
               what=f"{message_id} {status}")
    return dict(client.get(f"/v1/messages/{message_id}").json())


def delivered(mailbox: Mailbox, address: str) -> EmailMessage:
    wait_until(lambda: len(mailbox.for_recipient(address)) == 1, timeout=20, what=f"mail for {address}")
    return mailbox.message(mailbox.for_recipient(address)[0].id)


def inline_body(to: str, **extra: Any) -> dict[str, Any]:
    return {"to": to, "subject": "Invoice {{ number }}", "html": "<p>Hello {{ recipient.name }}, invoice "
            "{{ number }}.</p>", "text": "Hello, invoice {{ number }}.", "context": {"number": "A-17"}, **extra}


def test_a_complete_message_arrives_with_every_part(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to, cc, bcc = (f"{role}-{unique}@example.com" for role in ("buyer", "accounts", "archive"))
    # GIVEN a message with inline html and text, cc, bcc, reply-to, custom headers, metadata, tags,
    # an attached PDF and an inline logo shown through cid:
    body = inline_body(
        to, name="Ada", cc=[cc], bcc=[bcc], reply_to="Billing <billing@example.com>",
        html='<p>Hello {{ recipient.name }}, invoice {{ number }}.</p><img src="cid:logo@jetmail" alt="logo">',
        headers={"X-Order-Id": "A-17", "In-Reply-To": "<order-17@shop.example>"},
        metadata={"order": "A-17", "customer": "42"}, tags=["invoice", "billing"],
        attachments=[{"filename": "../../etc/Invoice A-17.pdf", "content": b64(PDF), "content_type": "application/pdf"},
                     {"filename": "logo.png", "content": b64(PNG), "content_type": "image/png",
                      "content_id": "logo@jetmail"}])
    # WHEN it is sent
    resp = client.post("/v1/messages", json=body)
    assert resp.status_code == 202, resp.text
    message_id = resp.json()["id"]
    # THEN one copy reaches each of to, cc and bcc (the bcc through the envelope alone)
    msg = delivered(mailbox, to)
    entry = mailbox.for_recipient(to)[0]
    assert {r.lower() for r in entry.rcpt_tos} == {to, cc, bcc}
    assert msg["Subject"] == "Invoice A-17"
    assert cc in str(msg["Cc"]) and msg["Bcc"] is None and bcc not in mailbox.raw(entry.id).decode()
    assert "billing@example.com" in str(msg["Reply-To"])
    assert msg["X-Order-Id"] == "A-17" and msg["In-Reply-To"] == "<order-17@shop.example>"
    assert msg["Message-ID"].startswith(f"<{message_id}@") and msg["X-Jetmail-Message-Id"] == message_id
    # the structure: mixed [related [alternative [text, html], logo], pdf]
    assert msg.get_content_type() == "multipart/mixed"
    related, attached = msg.iter_parts()
    assert related.get_content_type() == "multipart/related"
    alternative, logo = related.iter_parts()
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    html = alternative.get_body(("html",))
    assert html is not None and "Hello Ada, invoice A-17." in html.get_content()
    assert 'src="cid:logo@jetmail"' in html.get_content()
    assert logo["Content-ID"] == "<logo@jetmail>" and logo.get_content() == PNG
    assert attached.get_filename() == "Invoice A-17.pdf" and attached.get_content_type() == "application/pdf"
    assert attached.get_content() == PDF
    # AND the message shows its metadata, tags, copies and attachments
    record = wait_status(client, message_id, "sent")
    assert record["metadata"] == {"order": "A-17", "customer": "42"}
    assert record["tags"] == ["invoice", "billing"]
    assert (record["cc"], record["bcc"]) == ([cc], [bcc])
    assert [(a["filename"], a["size"]) for a in record["attachments"]] == [("Invoice A-17.pdf", len(PDF)),
                                                                          ("logo.png", len(PNG))]
    assert record["template"] is None and record["subject"] == "Invoice {{ number }}"


def test_text_only_inline_content_sends_one_text_part(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to = f"text-{unique}@example.com"
    resp = client.post("/v1/messages", json={"to": to, "subject": "Code {{ code }}", "text": "Your code: {{ code }}",
                                             "context": {"code": "123456"}})
    assert resp.status_code == 202, resp.text
    msg = delivered(mailbox, to)
    assert msg.get_content_type() == "text/plain" and "Your code: 123456" in msg.get_content()


@pytest.mark.parametrize(("change", "says"), [
    ({"headers": {"From": "ceo@example.com"}}, "set by jetmail"),
    ({"headers": {"List-Unsubscribe": "<https://evil.example>"}}, "set by jetmail"),
    ({"headers": {"X-Jetmail-Message-Id": "msg_x"}}, "set by jetmail"),
    ({"headers": {"Content-Type": "text/plain"}}, "set by jetmail"),
    ({"headers": {"X-Note": "a\r\nBcc: victim@example.com"}}, "line break"),
    ({"headers": {"Bad Name": "x"}}, "invalid header name"),
    ({"attachments": [{"filename": "setup.exe", "content": b64(b"MZ"), "content_type": "application/pdf"}]},
     ".exe files are refused"),
    ({"attachments": [{"filename": "a.txt", "content": b64(b"x"), "content_type": "application/x-msdownload"}]},
     "refused"),
    ({"attachments": [{"filename": "a.txt", "content": "not base64!", "content_type": "text/plain"}]}, "base64"),
    ({"template": "welcome"}, "not both"),
    ({"subject": None}, "needs a subject"),
    ({"html": "<p>{{ x.__class__ }}</p>"}, "html"),
    ({"metadata": {"bad key": "x"}}, "key"),
    ({"tags": ["no spaces"]}, "tags"),
], ids=["from", "list-unsubscribe", "x-jetmail", "content-type", "crlf", "name", "exe", "msdownload", "base64",
        "template-and-inline", "no-subject", "sandbox", "metadata", "tags"])
def test_refusals_say_why(client: TestClient, unique: str, change: dict[str, Any], says: str) -> None:
    body = {k: v for k, v in {**inline_body(f"refused-{unique}@example.com"), **change}.items() if v is not None}
    resp = client.post("/v1/messages", json=body)
    assert resp.status_code == 422, resp.text
    assert says in resp.text


def test_attachments_over_the_cap_are_413(client: TestClient, services: Services, unique: str) -> None:
    cap = services.settings.max_attachment_bytes
    big = {"filename": "big.bin", "content": b64(b"\0" * (cap // 2 + 1)), "content_type": "application/octet-stream"}
    resp = client.post("/v1/messages", json=inline_body(f"big-{unique}@example.com", attachments=[big, big]))
    assert resp.status_code == 413, resp.text
    assert "JETMAIL_MAX_ATTACHMENT_BYTES" in resp.text


def test_a_body_over_the_route_limit_is_413(client: TestClient, services: Services) -> None:
    settings = services.settings
    size = settings.max_body_bytes + settings.max_attachment_bytes * 4 // 3 + 16
    resp = client.post("/v1/messages", content=b"x" * size, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "request body exceeds" in resp.text


def test_a_suppressed_cc_is_dropped_and_reported(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    to, cc, gone = (f"{role}-{unique}@example.com" for role in ("main", "keep", "gone"))
    # GIVEN a suppressed address among the copies
    assert client.post("/v1/suppressions", json={"email": gone, "reason": "hard_bounce"}).status_code == 201
    # WHEN a message copies it
    resp = client.post("/v1/messages", json=inline_body(to, cc=[cc, gone]))
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    # THEN the message goes to the others, and the answer and record say the copy was dropped and why
    assert answer["status"] == "queued" and answer["cc"] == [cc]
    assert answer["suppressed_recipients"] == [{"address": gone, "role": "cc", "reason": "suppressed: hard_bounce"}]
    delivered(mailbox, to)
    assert {r.lower() for r in mailbox.for_recipient(to)[0].rcpt_tos} == {to, cc}
    assert mailbox.for_recipient(gone) == []
    assert wait_status(client, answer["id"], "sent")["suppressed_recipients"][0]["address"] == gone


def test_a_batch_answers_each_item(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    first, second = f"batch1-{unique}@example.com", f"batch2-{unique}@example.com"
    items = [inline_body(first, tags=["batch"], idempotency_key=f"b1-{unique}"),
             {"to": "not-an-address", "subject": "x", "text": "y"},
             inline_body(second, metadata={"n": "3"})]
    # WHEN a batch of three, one bad, is sent
    resp = client.post("/v1/messages/batch", json={"messages": items}, headers={"Idempotency-Key": f"batch-{unique}"})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    # THEN each item has its own result, in order
    assert (result["accepted"], result["failed"]) == (2, 1)
    assert [r["status"] for r in result["data"]] == [202, 422, 202]
    refused = result["data"][1]["problem"]
    assert refused["type"].endswith("/validation-error") and refused["errors"][0]["field"] == "to"
    ids = [r["message"]["id"] for r in result["data"] if r["message"]]
    delivered(mailbox, first)
    delivered(mailbox, second)
    # AND the same batch again sends nothing twice: every item's key is replayed
    again = client.post("/v1/messages/batch", json={"messages": items},
                        headers={"Idempotency-Key": f"batch-{unique}"}).json()
    assert [r["message"]["id"] for r in again["data"] if r["message"]] == ids
    assert [r["replayed"] for r in again["data"]] == [True, False, True]
    for message_id in ids:
        wait_status(client, message_id, "sent")
    assert len(mailbox.for_recipient(first)) == len(mailbox.for_recipient(second)) == 1


def test_filenames_are_sanitised() -> None:
    assert sanitise_filename("C:\\Users\\x\\report.pdf") == "report.pdf"
    assert sanitise_filename("../..\x00/\x1b.bashrc\n") == "bashrc"
    assert len(sanitise_filename("a" * 400 + ".pdf")) == 150 and sanitise_filename("a" * 400 + ".pdf").endswith(".pdf")
    with pytest.raises(ValueError, match="refused"):
        AttachmentIn(filename="invoice.pdf.exe", content=b64(b"x"), content_type="application/pdf")
    with pytest.raises(ValueError, match="empty"):
        sanitise_filename("../\x07/")


def test_custom_header_checks() -> None:
    check_custom_headers({"X-Campaign": "spring", "References": "<a@b>"})
    with pytest.raises(HeaderInjectionError):
        check_custom_headers({"X-A": "x\nY: z"})
    with pytest.raises(ValueError, match="at most"):
        check_custom_headers({f"X-H{i}": "v" for i in range(21)})
    for owned in ("message-id", "Return-Path", "DKIM-Signature", "List-Unsubscribe-Post", "MIME-Version",
                  "Received", "content-disposition"):
        with pytest.raises(ValueError, match="set by jetmail"):
            check_custom_headers({owned: "x"})


def test_any_filename_survives_the_round_trip_in_short_lines() -> None:
    names = ['Rechnung März "1".pdf', 'q"uote.txt', "日本語のファイル名" * 16 + ".pdf", "a" * 140 + ".pdf", "%" * 70]
    built = build_message(from_addr="a@example.com", to="b@example.com", subject="files", html=None, text="x",
                          message_id="<files@example.com>",
                          attachments=[MimeAttachment(n, "application/pdf", b"%PDF") for n in names])
    msg = email.message_from_bytes(built.data, policy=email.policy.default)
    assert [part.get_filename() for part in msg.iter_attachments()] == names
    assert max(len(line) for line in built.data.split(b"\r\n")) <= 120
