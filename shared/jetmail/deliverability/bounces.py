"""Bounces and complaints that come back by mail: the return path, the parsers, and their one way in.

Mail sent through the SMTP provider carries a VERP return path, ``bounces+<token>@<bounce domain>``
(``JETMAIL_BOUNCE_DOMAIN``). The token is lowercase base32 (MTAs may lowercase a local part; base64 would
not survive that) of the message id, packed small, and 80 bits of an HMAC under the signing secret
(purpose ``bounce``), so nobody can make one up for a message; the local part stays within the 64
octets RFC 5321 allows.

A report that reaches ``jetmail bounce-server`` (or the mailbox poller) is read as:

* an RFC 3464 DSN (``multipart/report; report-type=delivery-status``): per recipient, Action, Status and
  Diagnostic-Code;
* an RFC 5965 ARF complaint (``report-type=feedback-report``): its Feedback-Type, and the original
  message's headers, whose Return-Path holds the VERP address;
* anything else through ``flufl.bounce``'s detectors (Exchange, qmail, Yahoo, Postfix without a DSN...);
* an auto-reply (Auto-Submitted, X-Autoreply, ``Precedence: auto_reply``, "Out of Office") or a
  challenge-response mail is not a bounce and changes nothing.

The message is the one the VERP token names; only when the report reached jetmail without one (a relay
rewrote the return path) is it the one named by the original's ``X-Jetmail-Message-Id`` or
``Message-ID``, and then only when that message exists. Either way the recipient is the message's own
(from its record or campaign batch): a report about another address, a bad token, or a message jetmail
never sent changes nothing and is logged. What is found becomes the ``DeliveryEvent`` an SES
notification becomes, handed to the one ``FeedbackProcessor``: suppression, soft-bounce counts,
sequence cancellation, reputation counters and webhooks follow from it.

``classify`` is also how a synchronous 5xx reply during an SMTP send is read: the enhanced status code
first (5.1.1, 5.1.10 and the other bad-address codes are permanent; 4.x.x transient; 5.7.x a policy
refusal, counted as a permanent bounce for reputation but not suppressing), then the wording.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hmac
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any, Literal, Protocol

from jetmail.deliverability.events import DeliveryEvent, EventKind, event_id
from jetmail.messaging.tokens import Signer

logger = logging.getLogger("jetmail.deliverability.bounces")

# ---------------------------------------------------------------- VERP return path

VERP_PREFIX = "bounces+"
_PURPOSE = "bounce"
_MAC_BYTES = 10  # 80 bits: each guess costs the forger an SMTP transaction
_LOCAL_MAX = 64  # RFC 5321 4.5.3.1.1
_PAYLOAD_MAX = (_LOCAL_MAX - len(VERP_PREFIX)) * 5 // 8 - _MAC_BYTES
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-"
_RUNS = ("main", "test", "winner")
_MSG_ID = re.compile(r"^msg_([0-9a-f]+)$")
_CAMPAIGN_ID = re.compile(r"^cm_(.+)_([^_]+)_(\d+)_(\d+)$")
_GENERATED_CAMPAIGN = re.compile(r"^cmp_([0-9a-f]{16})(?:-(\d{1,15}))?$")  # cmp_<hex>, an A/B child cmp_<hex>-<stamp>
_VERP = re.compile(r"bounces\+([a-z2-7]{16,})@([a-z0-9.-]+)", re.IGNORECASE)


def _pack6(text: str) -> bytes | None:
    """``[0-9A-Za-z_-]`` text, six bits a character, behind its length."""
    if len(text) > 255 or any(c not in _ID_ALPHABET for c in text):
        return None
    number = 0
    for char in text:
        number = number << 6 | _ID_ALPHABET.index(char)
    return bytes([len(text)]) + number.to_bytes((len(text) * 6 + 7) // 8, "big")


def _unpack6(data: bytes) -> tuple[str, bytes]:
    count = data[0]
    size = (count * 6 + 7) // 8
    if len(data) < 1 + size:
        raise ValueError("short")
    number = int.from_bytes(data[1:1 + size], "big")
    chars = [_ID_ALPHABET[number >> 6 * (count - 1 - i) & 63] for i in range(count)]
    return "".join(chars), data[1 + size:]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _unvarint(data: bytes) -> tuple[int, bytes]:
    value = shift = 0
    for i, byte in enumerate(data[:10]):
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, data[i + 1:]
    raise ValueError("bad varint")


def _pack_id(message_id: str) -> bytes | None:
    """A message id in few bytes: ``msg_<hex>`` as its hex, a campaign id as its parts, else six bits a character."""
    match = _MSG_ID.match(message_id)
    if match:
        digits = match.group(1)
        return b"\x01" + bytes([len(digits)]) + int(digits, 16).to_bytes((len(digits) + 1) // 2, "big")
    match = _CAMPAIGN_ID.match(message_id)
    if match and match.group(2) in _RUNS:
        parts = bytes([_RUNS.index(match.group(2))]) + _varint(int(match.group(3))) + _varint(int(match.group(4)))
        generated = _GENERATED_CAMPAIGN.match(match.group(1))
        if generated:
            stamp = generated.group(2)
            return b"\x04" + bytes.fromhex(generated.group(1)) + _varint(int(stamp) + 1 if stamp else 0) + parts
        campaign = _pack6(match.group(1))
        if campaign is not None:
            return b"\x02" + campaign + parts
    packed = _pack6(message_id)
    return b"\x03" + packed if packed is not None else None


def _unpack_id(data: bytes) -> str:
    kind, rest = data[0], data[1:]
    if kind == 1:
        count = rest[0]
        digits = rest[1:]
        if len(digits) != (count + 1) // 2:
            raise ValueError("length")
        return f"msg_{int.from_bytes(digits, 'big'):0{count}x}"
    if kind in (2, 4):
        if kind == 2:
            campaign, rest = _unpack6(rest)
        else:
            if len(rest) < 8:
                raise ValueError("short")
            stamp, tail = _unvarint(rest[8:])
            campaign = f"cmp_{rest[:8].hex()}" + (f"-{stamp - 1}" if stamp else "")
            rest = tail
        run = _RUNS[rest[0]]
        batch, rest = _unvarint(rest[1:])
        pos, rest = _unvarint(rest)
        if rest:
            raise ValueError("trailing bytes")
        return f"cm_{campaign}_{run}_{batch}_{pos}"
    if kind == 3:
        text, rest = _unpack6(rest)
        if rest:
            raise ValueError("trailing bytes")
        return text
    raise ValueError("unknown kind")


def verp_address(message_id: str, *, signer: Signer, domain: str) -> str | None:
    """The return path of one message, or None when its id cannot be packed into 64 octets."""
    payload = _pack_id(message_id)
    if payload is None or len(payload) > _PAYLOAD_MAX:
        return None
    mac = signer.digest(_PURPOSE, payload)[:_MAC_BYTES]
    token = base64.b32encode(payload + mac).decode("ascii").rstrip("=").lower()
    return f"{VERP_PREFIX}{token}@{domain.lower()}"


def read_verp(token: str, *, signer: Signer) -> str | None:
    """The message id a token names, or None when it was not made by ``verp_address`` with this secret."""
    if not 16 <= len(token) <= _LOCAL_MAX:
        return None
    try:
        data = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except ValueError:
        return None
    if base64.b32encode(data).decode("ascii").rstrip("=").lower() != token.lower():
        return None  # another spelling of the same bytes (its unused last bits set): one token per message
    payload, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
    if not payload or not hmac.compare_digest(mac, signer.digest(_PURPOSE, payload)[:_MAC_BYTES]):
        return None
    try:
        return _unpack_id(payload)
    except (ValueError, IndexError):
        return None


# ---------------------------------------------------------------- classification

BounceType = Literal["Permanent", "Transient", "Undetermined"]
#: a permanent bounce of this subtype counts (reputation) but suppresses nobody: the mail, the sending IP or
#: the domain was refused, not the address
POLICY_SUBTYPE = "Policy"

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_BASIC = re.compile(r"\b([45]\d\d)\b")
_NO_MAILBOX = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does ?n[o']t exist|not exist|"
    r"mailbox (unavailable|not found)|recipient (address )?rejected|invalid (recipient|mailbox|address)|"
    r"address rejected|unknown (recipient|mailbox)|account (has been )?disabled|no mailbox",
    re.IGNORECASE)
_MAILBOX_FULL = re.compile(r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage", re.IGNORECASE)
_POLICY = re.compile(r"spam|blocked|block ?list|black ?list|policy|reputation|not authori[sz]ed|dmarc|spf",
                     re.IGNORECASE)
_HARD_ADDRESS_CODES = {(1, 1), (1, 2), (1, 3), (1, 6), (1, 10), (2, 1)}


@dataclass(frozen=True, slots=True)
class Classification:
    bounce_type: BounceType
    subtype: str
    status: str | None  # the enhanced status code, when there was one

    @property
    def suppresses(self) -> bool:
        return self.bounce_type == "Permanent" and self.subtype != POLICY_SUBTYPE


def enhanced_status(*texts: str | None) -> str | None:
    """The first RFC 3463 enhanced status code in ``texts``."""
    for text in texts:
        match = _ENHANCED.search(text or "")
        if match:
            return ".".join(match.groups())
    return None


def classify(status: str | None, diagnostic: str | None = None, *, reply_code: int | None = None) -> Classification:
    """Hard or soft, from the enhanced status code, else the SMTP reply code and the wording."""
    code = enhanced_status(status, diagnostic)
    text = diagnostic or ""
    if code is not None:
        klass, subject, detail = (int(p) for p in code.split("."))
        if klass == 2:
            return Classification("Undetermined", "General", code)
        if klass == 4:
            return Classification("Transient", "MailboxFull" if (subject, detail) == (2, 2) else "General", code)
        if (subject, detail) in _HARD_ADDRESS_CODES:
            return Classification("Permanent", "NoEmail", code)
        if subject == 7:
            return Classification("Permanent", POLICY_SUBTYPE, code)
        if (subject, detail) == (2, 2):
            return Classification("Transient", "MailboxFull", code)  # a full mailbox empties (RFC 3463 says 4.2.2)
        if (subject, detail) == (3, 4):
            return Classification("Transient", "MessageTooLarge", code)
        if subject == 6:
            return Classification("Transient", "ContentRejected", code)
        return Classification("Permanent", "General", code)
    if reply_code is None:
        match = _BASIC.search(text)
        reply_code = int(match.group(1)) if match else None
    if _MAILBOX_FULL.search(text):
        return Classification("Transient", "MailboxFull", None)
    if reply_code is not None and 400 <= reply_code < 500:
        return Classification("Transient", "General", None)
    if _NO_MAILBOX.search(text):
        return Classification("Permanent", "NoEmail", None)
    if _POLICY.search(text):
        return Classification("Permanent", POLICY_SUBTYPE, None)
    if reply_code is not None and 500 <= reply_code < 600:
        return Classification("Permanent", "General", None)
    return Classification("Undetermined", "General", None)


# ---------------------------------------------------------------- parsing

ReportKind = Literal["bounce", "complaint", "delay", "auto_reply", "unrecognised"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One recipient's line in a report: a failure, a delay, or a complaint."""

    kind: Literal["bounce", "delay", "complaint"]
    recipient: str | None  # None: redacted (ARF) or not stated
    classification: Classification | None = None
    diagnostic: str | None = None
    complaint_type: str | None = None
    user_agent: str | None = None


@dataclass(slots=True)
class Report:
    """What one received mail says, before it is tied to a message."""

    kind: ReportKind
    findings: list[Finding] = field(default_factory=list)
    verp_addresses: list[str] = field(default_factory=list)  # bounces+…@ addresses it names, most trusted first
    original_ids: list[str] = field(default_factory=list)  # jetmail message ids in the original's headers
    report_id: str = ""  # stable identity of this report (its Message-ID, else a digest)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))


_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response|antwort)|autoreply|"
    r"abwesenheit|absence|vacation|on leave|away from)", re.IGNORECASE)
_CHALLENGE = re.compile(r"please (confirm|verify) (your|that you)|verify (you are|that you are) (a )?human|"
                        r"sender verification|challenge[- ]response|spam ?arrest|whitelist request",
                        re.IGNORECASE)
# in a body only the request itself: "sender verification failed" is also what a policy bounce may say
_CHALLENGE_BODY = re.compile(r"please (confirm|verify) (your message|that you)|verify (that )?you are (a )?human",
                             re.IGNORECASE)
_CHALLENGE_HEADERS = ("x-boxtrapper", "x-challenge", "x-cr-hashedpuzzle", "x-askversion")
_ARF_USER_AGENT_MAX = 512
_DIAGNOSTIC_MAX = 1000


def parse_report(raw: bytes, *, envelope_to: Sequence[str] = ()) -> Report:
    """Read one received mail; never raises for malformed input (it is then ``unrecognised``)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    report = _parse(msg)
    # most trusted first: the envelope (RCPT TO), then the delivery headers the receiving MTA wrote
    named = list(envelope_to) + _header_addresses(msg, "delivered-to", "x-original-to", "envelope-to", "to")
    envelope = [a.strip().lower() for a in named if _VERP.fullmatch(a.strip())]
    report.verp_addresses = list(dict.fromkeys(envelope + report.verp_addresses))
    report.report_id = _clean(msg.get("message-id")) or event_id("raw", raw[:65536].hex())
    # occurred_at stays the arrival: a report's Date may be skewed or made up, and the reputation
    # monitor's hourly window wants when jetmail learnt of it
    return report


def _parse(msg: Message) -> Report:
    content_type = msg.get_content_type()
    report_type = (msg.get_param("report-type") or "")
    report_type = report_type.lower() if isinstance(report_type, str) else ""
    if content_type == "multipart/report" and report_type == "delivery-status":
        return _dsn(msg)
    if content_type == "multipart/report" and report_type == "feedback-report":
        return _arf(msg)
    if _is_auto_reply(msg):
        return Report(kind="auto_reply")
    return _heuristic(msg)


def _parts(msg: Message) -> list[Message]:
    return [p for p in msg.walk() if isinstance(p, Message)]


def _original_headers(msg: Message) -> Message | None:
    """The returned message or its headers (``message/rfc822`` or ``text/rfc822-headers``)."""
    for part in _parts(msg)[1:]:
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if content_type in ("text/rfc822-headers", "text/global-headers"):
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return HeaderParser(policy=email.policy.compat32).parsestr(body.decode("utf-8", "replace"))
    return None


def _original_ids(original: Message | None) -> list[str]:
    if original is None:
        return []
    ids = [(original.get("x-jetmail-message-id") or "").strip()]
    message_id = _clean(original.get("message-id"))
    if message_id:
        ids.append(message_id.partition("@")[0])
    return [i for i in dict.fromkeys(ids) if i and len(i) <= 256]


def _original_verp(original: Message | None) -> list[str]:
    if original is None:
        return []
    found = []
    for name in ("return-path", "x-jetmail-return-path"):
        for _, address in getaddresses(original.get_all(name) or []):
            if _VERP.fullmatch(address.strip()):
                found.append(address.strip().lower())
    return found


def _status_groups(msg: Message) -> list[Message]:
    """The field groups of the ``message/delivery-status`` part: per-message first, then per-recipient."""
    for part in _parts(msg):
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                return [p for p in payload if isinstance(p, Message)]
            if isinstance(payload, str):
                # a part the parser left as text: blank-line separated header groups
                text = payload.replace("\r\n", "\n")
                return [HeaderParser(policy=email.policy.compat32).parsestr(block + "\n")
                        for block in re.split(r"\n\s*\n", text) if block.strip()]
    return []


def _dsn(msg: Message) -> Report:
    findings = []
    for group in _status_groups(msg)[1:]:
        action = (group.get("action") or "").strip().lower()
        recipient = _typed_address(group.get("final-recipient")) or _typed_address(group.get("original-recipient"))
        diagnostic = _one_line(group.get("diagnostic-code"))
        status = (group.get("status") or "").strip() or None
        if action == "failed":
            findings.append(Finding(kind="bounce", recipient=recipient, diagnostic=diagnostic,
                                    classification=classify(status, diagnostic)))
        elif action == "delayed":
            findings.append(Finding(kind="delay", recipient=recipient, diagnostic=diagnostic or status))
        # delivered, relayed, expanded: nothing to learn
    original = _original_headers(msg)
    kind: ReportKind = "bounce" if any(f.kind == "bounce" for f in findings) else \
        "delay" if findings else "unrecognised"
    return Report(kind=kind, findings=findings, verp_addresses=_original_verp(original),
                  original_ids=_original_ids(original))


def _arf(msg: Message) -> Report:
    fields: Message | None = None
    for part in _parts(msg):
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                fields = payload[0]
            elif isinstance(payload, str):
                fields = HeaderParser(policy=email.policy.compat32).parsestr(payload)
            break
    if fields is None:
        return Report(kind="unrecognised")
    feedback_type = (fields.get("feedback-type") or "").strip().lower() or "abuse"
    original = _original_headers(msg)
    recipients = [_typed_address(v) or _plain_address(v) for v in fields.get_all("original-rcpt-to") or []]
    user_agent = _one_line(fields.get("user-agent"), _ARF_USER_AGENT_MAX)
    findings = [Finding(kind="complaint", recipient=r, complaint_type=feedback_type, user_agent=user_agent)
                for r in (recipients or [None])]
    verp = [_plain_address(v) for v in fields.get_all("original-mail-from") or []]
    return Report(kind="complaint", findings=findings,
                  verp_addresses=[a for a in verp if a and _VERP.fullmatch(a)] + _original_verp(original),
                  original_ids=_original_ids(original))


def _heuristic(msg: Message) -> Report:
    """A bounce in a format of its own (Exchange, qmail, Yahoo...), found by flufl.bounce's detectors."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector's own bug on hostile input is no reason to fail the intake
        logger.exception("bounce detectors failed on a report")
        return Report(kind="unrecognised")
    if not temporary and not permanent:
        return Report(kind="unrecognised")
    text = _body_text(msg)
    status = enhanced_status(text)
    findings: list[Finding] = []
    for address in sorted(permanent):
        classification = classify(status, text) if status else Classification("Permanent", "General", None)
        findings.append(Finding(kind="bounce", recipient=_decode(address), classification=classification,
                                diagnostic=_diagnostic_line(text)))
    for address in sorted(temporary - permanent):
        findings.append(Finding(kind="bounce", recipient=_decode(address),
                                classification=Classification("Transient", "General", status),
                                diagnostic=_diagnostic_line(text)))
    original = _original_headers(msg)
    return Report(kind="bounce", findings=findings, verp_addresses=_original_verp(original),
                  original_ids=_original_ids(original))


def _is_auto_reply(msg: Message) -> bool:
    auto = (msg.get("auto-submitted") or "").strip().lower()
    if auto and auto != "no":
        return True
    if msg.get("x-autoreply") is not None or msg.get("x-autorespond") is not None:
        return True
    if (msg.get("precedence") or "").strip().lower() == "auto_reply":
        return True
    if any(msg.get(name) is not None for name in _CHALLENGE_HEADERS):
        return True
    subject = _one_line(msg.get("subject")) or ""
    if _AUTO_SUBJECT.search(subject) or _CHALLENGE.search(subject):
        return True
    return _CHALLENGE_BODY.search(_body_text(msg)[:4000]) is not None


def _body_text(msg: Message) -> str:
    for part in _parts(msg):
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return body.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def _diagnostic_line(text: str) -> str | None:
    for line in text.splitlines():
        if _ENHANCED.search(line) or _BASIC.search(line):
            return _one_line(line)
    return None


def _typed_address(value: str | None) -> str | None:
    """``rfc822; user@example.com`` → ``user@example.com``."""
    if not value:
        return None
    kind, sep, address = value.partition(";")
    if not sep or kind.strip().lower() not in ("rfc822", "utf-8"):
        return None
    return _plain_address(address)


def _plain_address(value: str | None) -> str | None:
    _, address = parseaddr(value or "")
    address = address.strip().lower()
    return address if "@" in address and len(address) <= 320 else None


def _header_addresses(msg: Message, *names: str) -> list[str]:
    found = []
    for name in names:
        for _, address in getaddresses([str(v) for v in msg.get_all(name) or []]):
            if address:
                found.append(address.strip())
    return found


def _clean(value: str | None) -> str | None:
    text = (value or "").strip().strip("<>").strip()
    return text[:256] or None


def _one_line(value: object, limit: int = _DIAGNOSTIC_MAX) -> str | None:
    text = " ".join(str(value or "").split())
    return text[:limit] or None


def _decode(address: bytes) -> str:
    return address.decode("utf-8", "replace").strip().lower()


# ---------------------------------------------------------------- intake: report → feedback processor

class Attributed(Protocol):
    @property
    def recipient(self) -> str: ...


class Feedback(Protocol):
    """What the intake needs of ``jetmail.deliverability.feedback.FeedbackProcessor``."""

    def attribute(self, event: DeliveryEvent) -> Attributed: ...

    def process(self, event: DeliveryEvent) -> str: ...


@dataclass(slots=True)
class ReportOutcome:
    """What one received mail did."""

    kind: ReportKind | Literal["forged"]
    message_id: str | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    detail: str = ""


class BounceIntake:
    def __init__(self, *, feedback: Feedback, signer: Signer, bounce_domain: str | None) -> None:
        self.feedback = feedback
        self.signer = signer
        self.bounce_domain = (bounce_domain or "").lower() or None

    @classmethod
    def from_services(cls, services: Any) -> BounceIntake:
        """From ``jetmail.services.Services`` (its feedback processor, signer and settings)."""
        return cls(feedback=services.feedback, signer=services.signer, bounce_domain=services.settings.bounce_domain)

    def process(self, raw: bytes, *, envelope_to: Sequence[str] = ()) -> ReportOutcome:
        report = parse_report(raw, envelope_to=envelope_to)
        if report.kind in ("auto_reply", "unrecognised"):
            logger.info("report %s: %s, nothing to learn", report.report_id, report.kind.replace("_", " "))
            return ReportOutcome(kind=report.kind)
        message_id, why = self._message(report)
        if message_id is None:
            logger.warning("report %s (%s) ignored: %s", report.report_id, report.kind, why)
            return ReportOutcome(kind="forged", detail=why)
        # the message's own recipient, from its record or campaign batch: never an address the report names
        probe = DeliveryEvent(kind=EventKind.BOUNCE, recipient="", occurred_at=report.occurred_at,
                              event_id="probe", message_id=message_id, source="smtp")
        owner = self.feedback.attribute(probe).recipient
        if not owner:
            logger.warning("report %s names message %s, which jetmail does not know; ignored",
                           report.report_id, message_id)
            return ReportOutcome(kind="forged", message_id=message_id, detail="unknown message")
        outcomes: dict[str, int] = {}
        for event in self._events(report, message_id=message_id, owner=owner):
            outcome = self.feedback.process(event)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        logger.info("report %s (%s) about %s: %s", report.report_id, report.kind, message_id, outcomes or "nothing")
        return ReportOutcome(kind=report.kind, message_id=message_id, outcomes=outcomes)

    def _message(self, report: Report) -> tuple[str | None, str]:
        tokens = [m for m in (_VERP.fullmatch(a) for a in report.verp_addresses) if m is not None]
        for match in tokens:
            if self.bounce_domain is not None and match.group(2).lower() != self.bounce_domain:
                continue
            message_id = read_verp(match.group(1).lower(), signer=self.signer)
            if message_id is not None:
                return message_id, ""
        if tokens:
            return None, "its return-path token is not one jetmail made"
        # no VERP address reached us (a relay rewrote the return path): the original's own id, if it is real
        for candidate in report.original_ids:
            probe = DeliveryEvent(kind=EventKind.BOUNCE, recipient="", occurred_at=report.occurred_at,
                                  event_id="probe", message_id=candidate, source="smtp")
            if self.feedback.attribute(probe).recipient:
                return candidate, ""
        return None, "it names no message jetmail sent"

    def _events(self, report: Report, *, message_id: str, owner: str) -> Iterable[DeliveryEvent]:
        for finding in report.findings:
            if finding.recipient is not None and finding.recipient != owner:
                logger.warning("report %s: %s is not the recipient of %s; that line ignored",
                               report.report_id, finding.recipient, message_id)
                continue
            identity = event_id(finding.kind, report.report_id, message_id, owner)
            common = dict(recipient=owner, occurred_at=report.occurred_at, event_id=identity,
                          message_id=message_id, source="smtp")
            if finding.kind == "complaint":
                yield DeliveryEvent(kind=EventKind.COMPLAINT, complaint_type=finding.complaint_type,
                                    user_agent=finding.user_agent, **common)
            elif finding.kind == "delay":
                yield DeliveryEvent(kind=EventKind.DELIVERY_DELAY, diagnostic=finding.diagnostic,
                                    **common)
            else:
                classification = finding.classification or Classification("Undetermined", "General", None)
                yield DeliveryEvent(kind=EventKind.BOUNCE, bounce_type=classification.bounce_type,
                                    bounce_subtype=classification.subtype,
                                    diagnostic=finding.diagnostic or classification.status,
                                    **common)


def process_report(raw: bytes, *, intake: BounceIntake, envelope_to: Sequence[str] = ()) -> ReportOutcome:
    """Read one received report (from the bounce server or a mailbox) and apply what it says, once."""
    return intake.process(raw, envelope_to=envelope_to)


def reject_event(*, message_id: str, recipient: str, code: int, text: str, at: datetime | None = None
                 ) -> DeliveryEvent | None:
    """The bounce a synchronous 5xx reply to RCPT or DATA amounts to (None for a 4xx: the send is retried)."""
    if not 500 <= code < 600:
        return None
    classification = classify(None, f"{code} {text}", reply_code=code)
    when = at or datetime.now(UTC)
    return DeliveryEvent(kind=EventKind.BOUNCE, recipient=recipient.lower(), occurred_at=when,
                         event_id=event_id("reject", message_id, recipient.lower(), code),
                         message_id=message_id, source="smtp", bounce_type=classification.bounce_type,
                         bounce_subtype=classification.subtype, diagnostic=_one_line(f"smtp; {code} {text}"))
