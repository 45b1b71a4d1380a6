"""Outgoing messages assembled directly as RFC 5322 / MIME bytes.

The stdlib ``EmailMessage`` with its default policy builds under a thousand messages a second;
campaigns need tens of thousands, so the bytes are put together here from precomputed pieces.
The output is what the stdlib would accept back: CRLF line endings, lines of at most 998
octets, RFC 2047 encoded-words for non-ASCII header text, IDNA (ASCII) domains, UTF-8 bodies in
7bit, quoted-printable or base64, whichever is plain and compact.

Every header value, name and address is checked for CR, LF and NUL before anything is built:
a value that could start a new header line raises :class:`HeaderInjectionError`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class HeaderInjectionError(ValueError):
    """A header name, value or address contains CR, LF or NUL."""


class AddressError(ValueError):
    """An address is not a valid mailbox."""


class Address(NamedTuple):
    """A mailbox, unpackable as ``(display_name, addr_spec)``.

    ``addr_spec`` has its domain in IDNA (ASCII) form and the local part as given.
    """

    display_name: str
    addr_spec: str

    @property
    def smtputf8(self) -> bool:
        """The local part is not ASCII, so the message needs the SMTPUTF8 extension."""
        return not self.addr_spec.isascii()

    def __str__(self) -> str:
        return _mailbox(self)


@dataclass(frozen=True, slots=True)
class BuiltMessage:
    """The wire bytes plus what the sender needs for the SMTP envelope."""

    data: bytes
    #: Some address has a non-ASCII local part: send with SMTPUTF8 or not at all.
    smtputf8: bool
    message_id: str
    #: Envelope addresses (``MAIL FROM`` default and ``RCPT TO``), domains in ASCII.
    sender: str
    recipients: tuple[str, ...]


#: ``"Name <addr>"``, ``"addr"`` or ``(name, addr)`` (an :class:`Address` is such a tuple).
AddressInput = str | tuple[str, str]

_CRLF = "\r\n"
_MAX_LINE = 998
_FOLD_AT = 78
# Fold only before a space that has text after it: a line of only whitespace is obsolete syntax.
_FOLD_POINTS = re.compile(r"(?= \S)")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_PARAM_PIECE = 60
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
# Headers the builder writes itself; a second copy from ``headers`` would be ambiguous, and Bcc
# must never appear in a sent message at all.
_RESERVED_HEADERS = frozenset(
    (
        "from to cc bcc reply-to sender subject date message-id mime-version content-type "
        "content-transfer-encoding"
    ).split()
)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"({_DOT_ATOM})@((?:{_LABEL}\.)+{_LABEL})")
_PLAIN_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_NAME_ADDR = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*")
_MESSAGE_ID = re.compile(rf"<({_DOT_ATOM})@((?:{_LABEL}\.)*{_LABEL})>")
# Refused by email-validator (except "test", allowed for test setups); checked on the fast path
# so an address is accepted or refused the same way whichever path it takes.
_SPECIAL_USE = frozenset(d for d in SPECIAL_USE_DOMAIN_NAMES if d != "test")
_SPECIAL_USE_SUFFIXES = tuple(f".{d}" for d in _SPECIAL_USE)

# ASCII that 7bit cannot carry: control characters other than tab and line breaks.
_CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
_HIGH_BYTES = bytes(range(128, 256))
# RFC 2047 Q encoding for phrases: the few characters allowed literally, space as "_".
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = [chr(b) if b in _Q_SAFE else ("_" if b == 0x20 else f"={b:02X}") for b in range(256)]
# Payload room in one encoded-word: 75 characters minus "=?utf-8?q?" and "?=".
_WORD_ROOM = 75 - 12


def _check(value: str, what: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise HeaderInjectionError(f"{what} contains a line break or NUL")


# --- addresses


@lru_cache(maxsize=4096)
def _validated_addr_spec(addr: str) -> str:
    m = _PLAIN_ADDRESS.fullmatch(addr)
    if m is not None:
        local, domain = m.groups()
        lowered = domain.lower()
        # The common case is decided here; anything unusual (IDNA, quoting, length limits
        # close to the edge, special-use names) goes to email-validator.
        if (
            len(local) <= 64
            and len(addr) <= 254
            and "xn--" not in lowered
            and lowered not in _SPECIAL_USE
            and not lowered.endswith(_SPECIAL_USE_SUFFIXES)
        ):
            return addr
    try:
        info = validate_email(
            addr,
            check_deliverability=False,
            globally_deliverable=False,
            test_environment=True,
            allow_smtputf8=True,
        )
    except EmailNotValidError as exc:
        raise AddressError(f"invalid address {addr!r}: {exc}") from None
    # email-validator lowercases ASCII local parts; mailbox names are case-sensitive, so the
    # local part is kept as given and only the domain is taken in its ASCII form.
    return f"{addr.rsplit('@', 1)[0]}@{info.ascii_domain}"


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


@lru_cache(maxsize=1024)  # a campaign's sender is parsed for every message: once is enough
def parse_address(value: AddressInput) -> Address:
    """An :class:`Address` from ``"Name <addr>"``, a bare ``"addr"`` or ``(name, addr)``.

    An :class:`Address` given back is checked again (it may have been built by hand).

    Raises :class:`HeaderInjectionError` for CR, LF or NUL anywhere and :class:`AddressError`
    for anything that is not a single valid mailbox.
    """
    if isinstance(value, tuple):
        name, addr = value
        _check(name, "display name")
        _check(addr, "address")
    else:
        _check(value, "address")
        m = _NAME_ADDR.fullmatch(value)
        name, addr = (_unquote(m.group(1)), m.group(2)) if m else ("", value)
    return Address(display_name=name.strip(), addr_spec=_validated_addr_spec(addr.strip()))


def parse_addresses(values: AddressInput | Iterable[AddressInput]) -> list[Address]:
    """One or several addresses: a string or a tuple is one address, pass several in a list."""
    if isinstance(values, str | tuple):
        return [parse_address(values)]
    return [parse_address(v) for v in values]


# --- header text


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 encoded-words of at most 75 characters, split between whole characters."""
    data = text.encode("utf-8")
    q_cost = [len(_Q_BYTE[b]) for b in data]
    use_q = sum(q_cost) <= (len(data) + 2) // 3 * 4
    words: list[str] = []
    start = 0
    size = 0
    limit = _WORD_ROOM if use_q else _WORD_ROOM // 4 * 3
    for i, byte in enumerate(data):
        cost = q_cost[i] if use_q else 1
        # A UTF-8 continuation byte (0b10xxxxxx) never starts a word.
        if size + cost > limit and byte & 0xC0 != 0x80:
            words.append(_encode_word(data[start:i], use_q))
            start, size = i, 0
        size += cost
    words.append(_encode_word(data[start:], use_q))
    return words


def _encode_word(chunk: bytes, use_q: bool) -> str:
    if use_q:
        return "=?utf-8?q?" + "".join([_Q_BYTE[b] for b in chunk]) + "?="
    return "=?utf-8?b?" + base64.b64encode(chunk).decode("ascii") + "?="


@lru_cache(maxsize=4096)
def _unstructured(value: str) -> str:
    """Header text as is when it is plain ASCII, else as encoded-words."""
    if (
        value.isascii()
        and value.isprintable()
        and "=?" not in value
        and (len(value) < 900 or max(map(len, value.split(" "))) < 900)
        and value == value.strip()
    ):
        return value
    return " ".join(_encoded_words(value))


@lru_cache(maxsize=4096)
def _phrase(name: str) -> str:
    """A display name: an atom phrase as is, other ASCII quoted, anything else encoded."""
    if not name.isascii() or not name.isprintable() or "=?" in name:
        return " ".join(_encoded_words(name))
    if _PLAIN_PHRASE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox(address: Address) -> str:
    if not address.display_name:
        return address.addr_spec
    return f"{_phrase(address.display_name)} <{address.addr_spec}>"


def _header(name: str, value: str) -> str:
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line + _CRLF
    # The first word stays on the field name's line: a value that starts on a continuation
    # line gains a leading space in some parsers.
    first, *rest = _FOLD_POINTS.split(value)
    lines: list[str] = []
    current = f"{name}: {first}"
    for piece in rest:
        if len(current) + len(piece) > _FOLD_AT:
            lines.append(current)
            current = piece
        else:
            current += piece
    lines.append(current)
    if any(len(part.encode("utf-8")) > _MAX_LINE for part in lines):
        raise ValueError(f"{name} header has a word longer than {_MAX_LINE} octets")
    return _CRLF.join(lines) + _CRLF


def make_message_id(domain: str, unique: str) -> str:
    """``<unique@domain>``, the domain in IDNA form; ``unique`` must be dot-atom text."""
    _check(domain, "message id domain")
    _check(unique, "message id")
    ascii_domain = _ascii_domain(domain)
    message_id = f"<{unique}@{ascii_domain}>"
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"cannot make a message id from {unique!r} and {domain!r}")
    return message_id


@lru_cache(maxsize=256)
def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain.lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"invalid domain {domain!r}: {exc}") from None


# --- bodies


def _encode_body(text: str) -> tuple[str, bytes]:
    """Content-Transfer-Encoding and encoded body, line endings made CRLF."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\n", _CRLF)
    # Byte-level checks: several times faster than a regex over the text.
    if text.isascii():
        data = text.encode("ascii")
        if len(data.translate(None, _CONTROL_BYTES)) == len(data) and (
            len(data) <= _MAX_LINE or max(map(len, data.splitlines())) <= _MAX_LINE
        ):
            return "7bit", data
    else:
        data = text.encode("utf-8")
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    # Quoted-printable spends three octets per non-ASCII byte, base64 four per three bytes:
    # past one byte in six, base64 is smaller.
    if high * 6 > len(data):
        return "base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    return "quoted-printable", _quoted_printable(data)


# Quoted-printable encodes each line on its own, and the messages of one campaign share most of their lines:
# a line's encoding is kept for the next message (lines up to _QP_LINE_BYTES, _QP_LINES of them at most).
# A 3.6 KB HTML body through b2a_qp whole: 26 µs; from kept lines: 8 µs when every line was seen before, 19 µs
# for a campaign's mail, whose lines with the recipient's own links are new each time.
_QP_LINES = 2048
_QP_LINE_BYTES = 1024
_qp_lines: dict[bytes, bytes] = {}


def _quoted_printable(data: bytes) -> bytes:
    """What ``binascii.b2a_qp(data, istext=True)`` makes of CRLF text, line by line (soft breaks CRLF too,
    even in text of one line, where b2a_qp would break with a bare LF)."""
    lines = data.split(b"\r\n")
    last = lines.pop()
    kept = _qp_lines
    if len(kept) > _QP_LINES:
        kept.clear()
    encoded: list[bytes] = []
    for line in lines:
        qp = kept.get(line)
        if qp is None:
            qp = binascii.b2a_qp(line + b"\r\n", istext=True)
            if len(line) <= _QP_LINE_BYTES:
                kept[line] = qp
        encoded.append(qp)
    # a leading CRLF puts b2a_qp in CRLF mode for the last line, which has no line break of its own
    encoded.append(binascii.b2a_qp(b"\r\n" + last, istext=True)[2:])
    return b"".join(encoded)


_PART_HEADERS = {
    (subtype, cte): (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n'
    ).encode("ascii")
    for subtype in ("plain", "html")
    for cte in ("7bit", "quoted-printable", "base64")
}


# --- attachments

#: Fields a caller's ``headers`` may never set: the builder writes them, or they belong to the
#: transport (Return-Path, Received, DKIM-Signature) or to jetmail (List-Unsubscribe, X-Jetmail-*).
OWNED_HEADERS = frozenset(
    (
        "from to cc bcc reply-to sender subject date message-id mime-version return-path received "
        "dkim-signature domainkey-signature arc-seal arc-message-signature arc-authentication-results "
        "authentication-results list-unsubscribe list-unsubscribe-post list-id feedback-id "
        "resent-from resent-to resent-cc resent-bcc resent-sender resent-date resent-message-id "
        "errors-to delivered-to x-original-to"
    ).split()
)
OWNED_PREFIXES = ("content-", "x-jetmail-", "x-ses-", "x-amz-")
MAX_CUSTOM_HEADERS = 20
MAX_CUSTOM_HEADER_BYTES = 998
MAX_CUSTOM_HEADERS_TOTAL = 8 * 1024


def check_custom_headers(headers: Mapping[str, str]) -> None:
    """Raise ``ValueError`` (:class:`HeaderInjectionError` for CR, LF or NUL) for caller headers
    jetmail will not send: a name outside RFC 5322 field-name syntax, a field jetmail owns
    (:data:`OWNED_HEADERS`, ``Content-*``, ``X-Jetmail-*``), a duplicate name in another case,
    or past the caps (:data:`MAX_CUSTOM_HEADERS` fields, :data:`MAX_CUSTOM_HEADER_BYTES` a field,
    :data:`MAX_CUSTOM_HEADERS_TOTAL` in all)."""
    if len(headers) > MAX_CUSTOM_HEADERS:
        raise ValueError(f"{len(headers)} headers; at most {MAX_CUSTOM_HEADERS}")
    seen: set[str] = set()
    total = 0
    for name, value in headers.items():
        _check(name, f"header name {name[:40]!r}")
        _check(value, f"header {name}")
        if not _FIELD_NAME.fullmatch(name) or len(name) > 76:
            raise ValueError(f"invalid header name {name[:40]!r}: 1-76 printable ASCII characters, no colon or space")
        lowered = name.lower()
        if lowered in OWNED_HEADERS or lowered.startswith(OWNED_PREFIXES):
            raise ValueError(f"header {name} is set by jetmail and cannot be overridden")
        if lowered in seen:
            raise ValueError(f"header {name} is given twice (header names are case-insensitive)")
        seen.add(lowered)
        size = len(name) + 2 + len(value.encode("utf-8"))
        if size > MAX_CUSTOM_HEADER_BYTES:
            raise ValueError(f"header {name} is over {MAX_CUSTOM_HEADER_BYTES} bytes")
        total += size
    if total > MAX_CUSTOM_HEADERS_TOTAL:
        raise ValueError(f"headers total over {MAX_CUSTOM_HEADERS_TOTAL} bytes")


@dataclass(frozen=True, slots=True)
class MimeAttachment:
    """A file to attach; with ``content_id`` it is an inline part the HTML shows through ``cid:``."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted ASCII when short, else RFC 2231 ``name*=utf-8''...``, split into
    ``name*0*``, ``name*1*``... on folded lines when long (a lone line may not pass 998 octets)."""
    if value.isascii() and value.isprintable() and len(value) <= _PARAM_PIECE:
        return f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    encoded = quote(value, safe="")
    if len(encoded) <= _PARAM_PIECE:
        return f"{name}*=utf-8''{encoded}"
    pieces: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _PARAM_PIECE, len(encoded))
        # never split a %XX escape
        percent = encoded.rfind("%", end - 2, end)
        if percent != -1 and end < len(encoded):
            end = percent
        pieces.append(encoded[start:end])
        start = end
    charset = "utf-8''"
    return ";\r\n ".join(f"{name}*{i}*={charset if i == 0 else ''}{piece}" for i, piece in enumerate(pieces))


def _attachment_part(attachment: MimeAttachment) -> bytes:
    _check(attachment.filename, "attachment filename")
    _check(attachment.content_type, "attachment content type")
    if not _CONTENT_TYPE.fullmatch(attachment.content_type):
        raise ValueError(f"invalid content type {attachment.content_type!r}")
    disposition = "inline" if attachment.content_id else "attachment"
    head = [
        f"Content-Type: {attachment.content_type}; {_param('name', attachment.filename)}\r\n",
        f"Content-Disposition: {disposition}; {_param('filename', attachment.filename)}\r\n",
        "Content-Transfer-Encoding: base64\r\n",
    ]
    if attachment.content_id:
        _check(attachment.content_id, "content id")
        head.append(f"Content-ID: <{attachment.content_id}>\r\n")
    payload = base64.encodebytes(attachment.data).replace(b"\n", b"\r\n")
    return "".join(head).encode("utf-8") + b"\r\n" + payload


def _multipart(subtype: str, parts: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(Content-Type header, body) of a ``multipart/<subtype>`` entity of ``parts`` (each headers + body)."""
    boundary = _boundary(parts)
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    chunks = [delimiter[2:]]
    for i, part in enumerate(parts):
        if i:
            chunks.append(delimiter)
        chunks.append(part)
    chunks.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n'.encode("ascii"), b"".join(chunks)


# --- the message


def build_message(
    *,
    from_addr: AddressInput,
    to: AddressInput | Sequence[AddressInput],
    subject: str,
    html: str | None,
    text: str | None,
    message_id: str,
    date: datetime | None = None,
    reply_to: AddressInput | Sequence[AddressInput] | None = None,
    headers: Mapping[str, str] | None = None,
    cc: Sequence[AddressInput] = (),
    bcc: Sequence[AddressInput] = (),
    attachments: Sequence[MimeAttachment] = (),
) -> BuiltMessage:
    """The message as bytes: ``multipart/alternative`` (text, then HTML) when both bodies exist.

    ``cc`` goes into a ``Cc`` header and the envelope; ``bcc`` into the envelope only. Attachments
    with a ``content_id`` sit beside the HTML in ``multipart/related``, the others after the body
    in ``multipart/mixed``.

    ``message_id`` comes from :func:`make_message_id` (angle brackets optional); ``date``
    must be timezone-aware and defaults to now. ``headers`` adds fields such as
    ``List-Unsubscribe``; the fields the builder writes itself are refused there.
    Raises :class:`HeaderInjectionError`, :class:`AddressError` or ``ValueError``.
    """
    _check(subject, "subject")
    _check(message_id, "message id")
    extra = dict(headers or {})
    for name, value in extra.items():
        _check(name, "header name")
        _check(value, f"header {name}")
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name} is written by the builder")
    sender = parse_address(from_addr)
    recipients = parse_addresses(to)
    if not recipients:
        raise AddressError("no recipient")
    copies = [parse_address(a) for a in cc]
    blind = [parse_address(a) for a in bcc]
    replies = parse_addresses(reply_to) if reply_to is not None else []
    if html is None and text is None:
        raise ValueError("a message needs a text or an HTML body")
    if not message_id.startswith("<"):
        message_id = f"<{message_id}>"
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"invalid message id {message_id!r}")
    if date is not None and date.tzinfo is None:
        raise ValueError("date must be timezone-aware")

    head = [
        _header("From", _mailbox(sender)),
        _header("To", ", ".join(_mailbox(r) for r in recipients)),
    ]
    if copies:
        head.append(_header("Cc", ", ".join(_mailbox(r) for r in copies)))
    if replies:
        head.append(_header("Reply-To", ", ".join(_mailbox(r) for r in replies)))
    head.append(_header("Subject", _unstructured(subject)))
    stamp = _date_now(int(time.time())) if date is None else format_datetime(date)
    head.append(f"Date: {stamp}\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\n")
    for name, value in extra.items():
        head.append(_header(name, _unstructured(value)))

    parts = [
        (subtype, *_encode_body(body))
        for subtype, body in (("plain", text), ("html", html))
        if body is not None
    ]
    related = [a for a in attachments if a.content_id]
    files = [a for a in attachments if not a.content_id]
    if len(parts) == 1 and not attachments:
        subtype, cte, payload = parts[0]
        data = b"".join(["".join(head).encode("utf-8"), _PART_HEADERS[subtype, cte], b"\r\n", payload])
    else:
        entities = {subtype: _PART_HEADERS[subtype, cte] + b"\r\n" + payload for subtype, cte, payload in parts}
        if len(entities) == 2:
            kind, inner = _multipart("alternative", [entities["plain"], entities["html"]])
            entity = kind + b"\r\n" + inner
        else:
            entity = next(iter(entities.values()))
        if related:
            if html is None:
                raise ValueError("inline attachments (content_id) need an HTML body to show them")
            kind, inner = _multipart("related", [entity, *(_attachment_part(a) for a in related)])
            entity = kind + b"\r\n" + inner
        if files:
            kind, inner = _multipart("mixed", [entity, *(_attachment_part(a) for a in files)])
            entity = kind + b"\r\n" + inner
        data = "".join(head).encode("utf-8") + entity

    addresses = (sender, *recipients, *copies, *blind, *replies)
    return BuiltMessage(
        data=data,
        smtputf8=any(a.smtputf8 for a in addresses),
        message_id=message_id,
        sender=sender.addr_spec,
        recipients=tuple(r.addr_spec for r in (*recipients, *copies, *blind)),
    )


@lru_cache(maxsize=2)
def _date_now(second: int) -> str:
    """The Date field of mail built in this second: the same for every message of it, worked out once."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def _boundary(payloads: Iterable[bytes]) -> str:
    """A random boundary; "=_" never occurs in quoted-printable or base64, 7bit text is checked."""
    bodies = list(payloads)
    while True:
        boundary = "=_" + secrets.token_hex(12)
        marker = boundary.encode("ascii")
        if not any(marker in body for body in bodies):
            return boundary


class OutgoingEmail(BaseModel):
    """A message to build, as it travels in a job payload."""

    model_config = ConfigDict(frozen=True)

    from_addr: str | tuple[str, str]
    to: list[str | tuple[str, str]] = Field(min_length=1)
    subject: str
    html: str | None = None
    text: str | None = None
    message_id: str
    date: AwareDatetime | None = None
    reply_to: list[str | tuple[str, str]] | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    def build(self) -> BuiltMessage:
        return build_message(
            from_addr=self.from_addr,
            to=self.to,
            subject=self.subject,
            html=self.html,
            text=self.text,
            message_id=self.message_id,
            date=self.date,
            reply_to=self.reply_to,
            headers=self.headers,
        )
