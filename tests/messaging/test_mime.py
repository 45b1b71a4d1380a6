from __future__ import annotations

import binascii
import email
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetmail.messaging import mime
from jetmail.messaging.mime import (
    Address,
    AddressError,
    BuiltMessage,
    HeaderInjectionError,
    OutgoingEmail,
    build_message,
    make_message_id,
    parse_address,
)

DATE = datetime(2025, 3, 14, 9, 30, tzinfo=timezone(timedelta(hours=1)))
TEXT = "Hallo Jürgen,\n\ndeine Bestellung ist unterwegs.\nGrüße\n"
HTML = "<html><body><p>Hallo J&uuml;rgen,</p><p>deine Bestellung ist unterwegs. Grüße</p></body></html>"


def build(**overrides: Any) -> BuiltMessage:
    fields: dict[str, Any] = {
        "from_addr": ("Jürgen Müller", "news@example.com"),
        "to": "Ann Example <ann@example.org>",
        "subject": "Grüße aus München: deine Bestellung",
        "html": HTML,
        "text": TEXT,
        "message_id": make_message_id("example.com", "abc.123"),
        "date": DATE,
    }
    return build_message(**{**fields, **overrides})


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def test_message_parses_back_with_the_stdlib() -> None:
    # GIVEN a message with non-ASCII subject, display name and bodies
    built = build(
        reply_to=["Support <help@example.com>"], headers={"List-Unsubscribe": "<https://x.example/u/1>"}
    )
    # WHEN the stdlib parses the bytes
    message = parse(built.data)
    # THEN every header and both bodies come back exactly
    assert message["Subject"] == "Grüße aus München: deine Bestellung"
    assert message["From"].addresses[0].display_name == "Jürgen Müller"
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert str(message["To"]) == "Ann Example <ann@example.org>"
    assert str(message["Reply-To"]) == "Support <help@example.com>"
    assert message["Message-ID"] == "<abc.123@example.com>"
    assert message["Date"].datetime == DATE
    assert message["MIME-Version"] == "1.0"
    assert message["List-Unsubscribe"] == "<https://x.example/u/1>"
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert text.get_content() == crlf(TEXT)
    assert html.get_content() == HTML
    assert text.get_content_charset() == "utf-8"
    assert not message.defects and not text.defects and not html.defects
    assert built.message_id == "<abc.123@example.com>"
    assert (built.sender, built.recipients, built.smtputf8) == (
        "news@example.com",
        ("ann@example.org",),
        False,
    )


def test_wire_format_uses_crlf_and_short_lines() -> None:
    long_html = "<p>" + "x" * 5000 + "</p>\n" + "<p>" + "ü" * 3000 + "</p>"
    data = build(html=long_html, subject="word " * 60 + "end").data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    head = data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert head.isascii()
    assert parse(data)["Subject"] == "word " * 60 + "end"
    assert parse(data).get_body(("html",)).get_content() == long_html.replace("\n", "\r\n")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        ("Plain ASCII text.\nSecond line.", "7bit"),
        ("Viele Grüße aus München, wir melden uns bald wieder mit Neuigkeiten.", "quoted-printable"),
        ("Grüße!", "base64"),
        ("x" * 1500, "quoted-printable"),
        ("trailing space \nand tab\t\nand a =sign", "7bit"),
        ("bell \x07 rings", "quoted-printable"),
        ("日本語のテキストです。" * 20, "base64"),
        ("Line one\r\nline two\rline three\n", "7bit"),
    ],
)
def test_bodies_pick_a_transfer_encoding_and_decode_exactly(body: str, encoding: str) -> None:
    message = parse(build(text=body, html=None).data)
    assert message["Content-Transfer-Encoding"] == encoding
    normalised = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    assert message.get_content() == normalised


# CRLF text made of what quoted-printable treats apart: "=", non-ASCII, white space before a line end, long lines
qp_texts = st.lists(st.sampled_from([b"a", b" ", b"\t", b"=", "·".encode(), b".", b"\r\n", b"x" * 80, b"y" * 30]),
                    max_size=30).map(b"".join)


@given(qp_texts)
def test_quoted_printable_is_what_the_stdlib_encodes(data: bytes) -> None:
    expected = binascii.b2a_qp(data, istext=True)
    if b"\r\n" not in data:
        expected = expected.replace(b"=\n", b"=\r\n")  # b2a_qp breaks a lone line with a bare LF
    assert mime._quoted_printable(data) == expected
    assert mime._quoted_printable(data) == expected  # again, from the lines kept the first time
    assert binascii.a2b_qp(expected) == data


def test_single_part_when_only_html() -> None:
    message = parse(build(text=None).data)
    assert message.get_content_type() == "text/html"
    assert message.get_content() == HTML


@pytest.mark.parametrize(
    "subject",
    [
        "Plain ASCII subject",
        "Grüße aus München \u2013 Ihr Angebot für Straße & Co " * 3,
        "日本語のメール件名です、とても長い件名になります。" * 2,
        "  leading and trailing spaces  ",
        "double  space and a tab\there",
        "looks like =?utf-8?q?an_encoded_word?= but is not",
        "x" * 1200,
        "",
    ],
)
def test_subject_round_trips(subject: str) -> None:
    data = build(subject=subject).data
    assert parse(data)["Subject"] == subject
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    ("given", "name", "addr"),
    [
        ("Ann <ann@example.com>", "Ann", "ann@example.com"),
        ("ann@example.com", "", "ann@example.com"),
        ('"Doe, John \\"JD\\"" <john@example.com>', 'Doe, John "JD"', "john@example.com"),
        (("Dr. Bob (Ops)", "bob@example.com"), "Dr. Bob (Ops)", "bob@example.com"),
        (("Zoë Ångström", "zoe@example.com"), "Zoë Ångström", "zoe@example.com"),
        (("=?utf-8?q?x?=", "a@example.com"), "=?utf-8?q?x?=", "a@example.com"),
    ],
)
def test_display_names_round_trip(given: str | tuple[str, str], name: str, addr: str) -> None:
    parsed = parse_address(given)
    assert (parsed.display_name, parsed.addr_spec) == (name, addr)
    header = parse(build(to=[given]).data)["To"]
    assert (header.addresses[0].display_name, header.addresses[0].addr_spec) == (name, addr)


def test_address_unpacks_as_name_and_addr_spec() -> None:
    name, addr = parse_address("Bücherei <Info@Bücher.de>")
    assert (name, addr) == ("Bücherei", "Info@xn--bcher-kva.de")
    assert str(parse_address(("Zoë", "zoe@example.com"))) == "=?utf-8?q?Zo=C3=AB?= <zoe@example.com>"
    with pytest.raises(AddressError):
        parse_address(Address("Hand made", "not-an-address"))


def test_several_recipients() -> None:
    built = build(to=["a@example.com", ("Bé", "b@example.com"), Address("C", "c@example.com")])
    assert [a.addr_spec for a in parse(built.data)["To"].addresses] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert built.recipients == ("a@example.com", "b@example.com", "c@example.com")


def test_international_domain_is_sent_in_idna_form() -> None:
    built = build(from_addr="Bücherei <info@bücher.de>", to="leser@münchen.example")
    message = parse(built.data)
    assert message["From"].addresses[0].addr_spec == "info@xn--bcher-kva.de"
    assert message["To"].addresses[0].addr_spec == "leser@xn--mnchen-3ya.example"
    assert built.data.split(b"\r\n\r\n", 1)[0].isascii()
    assert built.smtputf8 is False
    assert built.sender == "info@xn--bcher-kva.de"


def test_non_ascii_local_part_needs_smtputf8() -> None:
    built = build(to="jürgen@example.com")
    assert built.smtputf8 is True
    assert "To: jürgen@example.com\r\n".encode() in built.data
    assert build().smtputf8 is False


@pytest.mark.parametrize(
    "bad", ["not an address", "a@", "@example.com", "a b@example.com", "a@localhost", "a@x..y"]
)
def test_invalid_addresses_are_refused(bad: str) -> None:
    with pytest.raises(AddressError):
        build(to=bad)


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hello\r\nBcc: victim@example.com"},
        {"subject": "Hello\nBcc: victim@example.com"},
        {"subject": "Hello\rX"},
        {"subject": "Hello\x00"},
        {"from_addr": ("Evil\r\nBcc: victim@example.com", "a@example.com")},
        {"from_addr": "Evil\n <a@example.com>"},
        {"from_addr": ("Name", "a@example.com\r\nBcc: victim@example.com")},
        {"to": "ann@example.org\nBcc: victim@example.com"},
        {"to": ["ok@example.org", ("Name\r", "b@example.org")]},
        {"reply_to": "help@example.com\r\n"},
        {"headers": {"X-Tag\r\nBcc": "x"}},
        {"headers": {"X-Tag": "value\r\nBcc: victim@example.com"}},
        {"headers": {"X-Tag": "value\nmore"}},
        {"message_id": "<a@b>\r\nBcc: victim@example.com"},
    ],
)
def test_header_injection_is_refused_before_building(overrides: dict[str, Any]) -> None:
    with pytest.raises(HeaderInjectionError):
        build(**overrides)
    assert issubclass(HeaderInjectionError, ValueError)


@pytest.mark.parametrize(
    "headers",
    [
        {"Bad Name": "x"},
        {"X:Y": "x"},
        {"": "x"},
        {"X-Ü": "x"},
        {"Bcc": "victim@example.com"},
        {"subject": "again"},
    ],
)
def test_custom_header_names_must_be_valid_and_not_reserved(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="header"):
        build(headers=headers)


def test_custom_header_values_are_encoded_when_not_ascii() -> None:
    message = parse(build(headers={"X-Campaign": "Frühling 2025", "X-Plain": "spring"}).data)
    assert (message["X-Campaign"], message["X-Plain"]) == ("Frühling 2025", "spring")


def test_make_message_id() -> None:
    assert make_message_id("Example.COM", "1a2b.c3") == "<1a2b.c3@example.com>"
    assert make_message_id("bücher.de", "x") == "<x@xn--bcher-kva.de>"
    with pytest.raises(ValueError):
        make_message_id("example.com", "has space")
    with pytest.raises(ValueError):
        make_message_id("example.com", "a..b")


def test_message_id_without_brackets_is_accepted_and_bad_ids_refused() -> None:
    assert parse(build(message_id="x.1@example.com").data)["Message-ID"] == "<x.1@example.com>"
    with pytest.raises(ValueError):
        build(message_id="<no-at-sign>")


def test_date_defaults_to_now_and_must_be_aware() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    sent = parse(build(date=None).data)["Date"].datetime
    assert before <= sent <= datetime.now(UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        build(date=datetime(2025, 1, 1))


def test_a_body_is_required() -> None:
    with pytest.raises(ValueError, match="body"):
        build(text=None, html=None)


def test_outgoing_email_model_builds() -> None:
    outgoing = OutgoingEmail.model_validate(
        {
            "from_addr": "Shop <shop@example.com>",
            "to": ["ann@example.org", ["Bob", "bob@example.org"]],
            "subject": "Receipt",
            "text": "Thanks",
            "message_id": "<r.1@example.com>",
            "date": "2025-03-14T09:30:00+01:00",
            "headers": {"X-Job": "42"},
        }
    )
    message = parse(outgoing.build().data)
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.org", "bob@example.org"]
    assert message.get_content() == "Thanks"
    assert message["X-Job"] == "42"
