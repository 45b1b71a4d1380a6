"""SMTP submission, the domain side: what a message accepted by ``jetmail smtp-server`` becomes.

A submitted message is complete MIME. jetmail keeps it as sent but for a few headers: its own
``X-Jetmail-*`` instructions (tags, metadata, category) and ``Bcc`` are read and removed, a missing
``Message-ID`` and ``Date`` are added (RFC 6409 section 8). Each envelope recipient becomes one
message record of kind ``raw`` and one ``send_message`` job, exactly like ``POST /v1/messages``; the
worker sends it through the one send pipeline (suppression, rate slot, provider, outcome hooks)
without a render.

The body itself waits in a JetStream object store (bucket ``SUBMISSIONS``), not in DynamoDB, whose
items stop at 400 KB: one copy per submission whatever the number of recipients, up to
``JETMAIL_SUBMISSION_MAX_BYTES`` (10 MB by default), kept for ``JETMAIL_SUBMISSION_RETENTION_HOURS``
(the bucket's TTL) so that retries find it, and gone after that.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from jetmail.messaging.mime import parse_address

BUCKET = "SUBMISSIONS"
MAX_TAGS = 10
MAX_METADATA_BYTES = 2048
CATEGORIES = ("transactional", "marketing")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_FIELD_NAME_RE = re.compile(rb"^[!-9;-~]+$")  # RFC 5322 ftext
# read and removed; X-Jetmail-Message-Id is jetmail's to set, never the submitter's
_INSTRUCTIONS = {b"x-jetmail-tags", b"x-jetmail-metadata", b"x-jetmail-category", b"x-jetmail-message-id", b"bcc"}


class Refused(Exception):
    """A message jetmail will not accept as it is: ``reply`` is the full SMTP reply (code, enhanced code, text)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass
class Prepared:
    """A submitted message made ready to store: its bytes and what its instruction headers said."""

    raw: bytes
    from_header: str
    message_id_header: str
    category: str = "transactional"
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _fields(header_block: bytes) -> list[tuple[bytes, bytes]]:
    """Header fields as (lower-cased name, the whole field with its folded lines and CRLFs)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header_block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise Refused("554 5.6.0 The message starts with a folded line: no header field to continue")
            name, text = fields[-1]
            fields[-1] = (name, text + line + b"\r\n")
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not name or not _FIELD_NAME_RE.match(name):
            shown = line[:40].decode("ascii", "replace")
            raise Refused(f"554 5.6.0 Malformed header line {shown!r}: expected 'Name: value'")
        fields.append((name.lower(), line + b"\r\n"))
    return fields


def _value(text: bytes) -> str:
    value = text.split(b":", 1)[1]
    return value.replace(b"\r\n", b"").strip().decode("utf-8", "replace")


def prepare(content: bytes, *, message_id_header: str, smtputf8: bool, eight_bit: bool) -> Prepared:
    """Check and rewrite one submitted message (``content`` with CRLF line ends, dot-unstuffed). Raises
    Refused with the SMTP reply for content jetmail cannot send as it is."""
    if not content.isascii() and not (eight_bit or smtputf8):
        raise Refused("554 5.6.0 The message has 8-bit content but MAIL FROM did not declare BODY=8BITMIME "
                      "(this server offers 8BITMIME)")
    head, sep, body = content.partition(b"\r\n\r\n")
    if not sep:
        head, body = content, b""
    if not head.isascii() and not smtputf8:
        raise Refused("554 5.6.7 Non-ASCII header fields need SMTPUTF8 on MAIL FROM (RFC 6532)")
    fields = _fields(head)
    by_name: dict[bytes, list[bytes]] = {}
    for name, text in fields:
        by_name.setdefault(name, []).append(text)
    froms = by_name.get(b"from", [])
    if len(froms) != 1:
        raise Refused(f"554 5.6.0 The message needs exactly one From header field, it has {len(froms)}")
    from_header = _value(froms[0])
    try:
        parse_address(from_header)
    except ValueError as exc:
        raise Refused(f"553 5.1.7 The From header is not one valid mailbox: {exc}") from None
    prepared = Prepared(raw=b"", from_header=from_header, message_id_header=message_id_header)
    prepared.category = _category(by_name.get(b"x-jetmail-category", []))
    prepared.tags = _tags(by_name.get(b"x-jetmail-tags", []))
    prepared.metadata = _metadata(by_name.get(b"x-jetmail-metadata", []))
    strip = set(_INSTRUCTIONS)
    if prepared.category == "marketing":
        # jetmail adds its own one-click unsubscribe pair to marketing mail: one pair, and it works
        strip |= {b"list-unsubscribe", b"list-unsubscribe-post"}
    kept = [text for name, text in fields if name not in strip]
    added: list[bytes] = []
    ids = by_name.get(b"message-id", [])
    if len(ids) > 1:
        raise Refused("554 5.6.0 The message has more than one Message-ID header field")
    if ids:
        prepared.message_id_header = _value(ids[0])
    else:
        added.append(f"Message-ID: {message_id_header}\r\n".encode("ascii"))
    if b"date" not in by_name:
        added.append(f"Date: {formatdate(localtime=False, usegmt=True)}\r\n".encode("ascii"))
    prepared.raw = b"".join(added + kept) + b"\r\n" + body
    return prepared


def _single(values: list[bytes], name: str) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise Refused(f"554 5.6.0 More than one {name} header field")
    return _value(values[0])


def _category(values: list[bytes]) -> str:
    value = _single(values, "X-Jetmail-Category")
    if value is None:
        return "transactional"
    if value.lower() not in CATEGORIES:
        raise Refused(f"554 5.6.0 X-Jetmail-Category must be transactional or marketing, not {value[:40]!r}")
    return value.lower()


def _tags(values: list[bytes]) -> list[str]:
    tags = [t.strip() for v in values for t in _value(v).split(",") if t.strip()]
    for tag in tags:
        if not _TAG_RE.match(tag):
            raise Refused(f"554 5.6.0 X-Jetmail-Tags: {tag[:70]!r} is not a tag (1-64 of A-Z a-z 0-9 _ . : -, "
                          "comma separated)")
    if len(tags) > MAX_TAGS:
        raise Refused(f"554 5.6.0 X-Jetmail-Tags: {len(tags)} tags, at most {MAX_TAGS}")
    return list(dict.fromkeys(tags))


def _metadata(values: list[bytes]) -> dict[str, str]:
    text = _single(values, "X-Jetmail-Metadata")
    if text is None:
        return {}
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise Refused(f"554 5.6.0 X-Jetmail-Metadata is over {MAX_METADATA_BYTES} bytes")
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise Refused("554 5.6.0 X-Jetmail-Metadata must be a JSON object, e.g. {\"order\": \"1234\"}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str | int | float | bool) for v in data.values()):
        raise Refused("554 5.6.0 X-Jetmail-Metadata must be a JSON object of strings, numbers or booleans")
    return {str(k): str(v) for k, v in data.items()}


class RawStore:
    """Submitted MIME bodies in a JetStream object store, kept ``ttl_s`` seconds (retries included)."""

    def __init__(self, js: Any, *, ttl_s: float, replicas: int = 1, bucket: str = BUCKET) -> None:
        self.js = js
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.bucket = bucket
        self._store: Any = None

    async def _obs(self) -> Any:
        if self._store is None:
            from nats.js.api import ObjectStoreConfig
            from nats.js.errors import BucketNotFoundError

            try:
                self._store = await self.js.object_store(self.bucket)
            except BucketNotFoundError:
                self._store = await self.js.create_object_store(
                    self.bucket, config=ObjectStoreConfig(bucket=self.bucket, ttl=self.ttl_s, replicas=self.replicas,
                                                          description="MIME submitted over SMTP, until sent"))
        return self._store

    async def put(self, ref: str, data: bytes) -> None:
        await (await self._obs()).put(ref, data)

    async def get(self, ref: str) -> bytes | None:
        from nats.js.errors import NotFoundError

        try:
            result = await (await self._obs()).get(ref)
        except NotFoundError:
            return None
        return bytes(result.data or b"")


class BlockingRawStore:
    """The raw store for synchronous callers (the API, the CLI): each call runs on the job layer client's
    loop, with that connection's current JetStream context. Messages sent through the API keep their
    attachments here (``att_<id>``), in the same bucket and with the same TTL as submitted MIME."""

    def __init__(self, client: Any, *, ttl_s: float, replicas: int = 1, bucket: str = BUCKET) -> None:
        self.client = client  # jetmail.queue.SyncClient
        self.store = RawStore(None, ttl_s=ttl_s, replicas=replicas, bucket=bucket)

    def _bound(self, operation: Any) -> Any:
        def bound(queue: Any) -> Any:
            if self.store.js is not queue.js:  # a reconnect makes a new context
                self.store.js, self.store._store = queue.js, None
            return operation()

        return self.client.run(bound)

    def put(self, ref: str, data: bytes) -> None:
        """One object put (chunked by the object store)."""
        self._bound(lambda: self.store.put(ref, data))

    def get(self, ref: str) -> bytes | None:
        return self._bound(lambda: self.store.get(ref))  # type: ignore[no-any-return]
