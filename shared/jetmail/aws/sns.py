"""Amazon SNS message signatures, verified before anything in a message is believed.

An SNS HTTPS subscription POSTs to a public URL, so the signature is the only thing that tells a
message from SNS apart from one anybody could send. The checks, cheapest first, so an unwanted
message never makes jetmail fetch anything:

1. ``TopicArn`` is one of the configured topics (``sns_topic_arns``);
2. ``Timestamp`` is no older than ``sns_max_age_s`` and not more than a few minutes ahead (a
   captured message cannot be replayed later);
3. ``SigningCertURL`` is https, on a host matching ``sns_cert_host_pattern``, with a path ending
   ``.pem`` (a message cannot bring its own certificate);
4. the certificate (from ``sns_cert_cache_dir``, the process cache, or fetched once over https)
   is within its validity period and holds an RSA key;
5. the RSA PKCS#1 v1.5 signature over the canonical string (SHA1 for ``SignatureVersion`` "1",
   SHA256 for "2") is valid.

Every failure is an ``SnsVerificationError`` with a machine-readable ``reason`` (answered 403); a
body that is not an SNS message at all is ``SnsMessageInvalid`` (400); a certificate that cannot be
fetched right now is ``SnsCertificateUnavailable`` (503, so SNS retries later).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import from_json

from jetmail.config import Settings

if TYPE_CHECKING:
    # cryptography costs ~40 ms of every cold start that imports this module; only a verification needs it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger("jetmail.aws.sns")

MESSAGE_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_HASH_NAMES = {"1": "SHA1", "2": "SHA256"}


def _hash(signature_version: str) -> hashes.HashAlgorithm | None:
    from cryptography.hazmat.primitives import hashes

    name = _HASH_NAMES.get(signature_version)
    return getattr(hashes, name)() if name else None
_MAX_FUTURE_SKEW = timedelta(minutes=5)
_MAX_CERT_BYTES = 64 * 1024

Reason = Literal["topic", "timestamp", "message_type", "cert_url", "cert_host", "certificate", "signature_version",
                 "signature"]


class SnsMessageInvalid(ValueError):
    """The body is not an SNS message: not JSON, not an object, or a required field missing."""


class SnsVerificationError(Exception):
    """The message does not prove it comes from SNS for an allowed topic."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


class SnsCertificateUnavailable(RuntimeError):
    """The signing certificate could not be fetched now; the message may well be genuine."""


class SnsConfirmationFailed(RuntimeError):
    """SNS refused or did not answer the ConfirmSubscription call."""


class SnsMessage(BaseModel):
    """One SNS message as SNS POSTs it to an HTTPS endpoint (field names as SNS spells them)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    Type: str = Field(min_length=1)
    MessageId: str = Field(min_length=1)
    TopicArn: str = Field(min_length=1)
    Message: str
    # kept as sent: the signed string holds it verbatim
    Timestamp: str = Field(min_length=1)
    SignatureVersion: str = Field(min_length=1)
    Signature: str = Field(min_length=1)
    # the Lambda event spells it SigningCertUrl; the HTTPS body SigningCertURL
    SigningCertURL: str = Field(min_length=1, validation_alias=AliasChoices("SigningCertURL", "SigningCertUrl"))
    Subject: str | None = None
    SubscribeURL: str | None = None
    Token: str | None = None
    UnsubscribeURL: str | None = Field(default=None, validation_alias=AliasChoices("UnsubscribeURL", "UnsubscribeUrl"))

    @model_validator(mode="after")
    def _complete(self) -> SnsMessage:
        parse_timestamp(self.Timestamp)
        if self.Type in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            missing = [name for name in ("SubscribeURL", "Token") if not getattr(self, name)]
            if missing:
                raise ValueError(f"{self.Type} without {', '.join(missing)}")
        return self

    @property
    def sent_at(self) -> datetime:
        return parse_timestamp(self.Timestamp)


def parse_timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"Timestamp is not ISO 8601: {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"Timestamp has no time zone: {text!r}")
    return value


def parse_sns_message(body: bytes | str) -> SnsMessage:
    """The SNS message in an HTTPS request body; SnsMessageInvalid when it is none."""
    try:
        # pydantic-core's parser stops at a fixed nesting depth with a ValueError; json.loads recurses until
        # RecursionError, which a public, unauthenticated route must never reach
        data = from_json(body)
    except ValueError as exc:
        raise SnsMessageInvalid(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SnsMessageInvalid("body is not a JSON object")
    try:
        return SnsMessage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise SnsMessageInvalid(f"not an SNS message: {problems}") from None


def string_to_sign(message: SnsMessage) -> bytes:
    """The canonical ``Key\\nValue\\n`` string SNS signs; Subject only when the message has one."""
    keys: Iterable[str] = _NOTIFICATION_KEYS if message.Type == "Notification" else _CONFIRMATION_KEYS
    parts = []
    for key in keys:
        value = getattr(message, key)
        if value is None:
            continue
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode("utf-8")


def cert_cache_name(url: str) -> str:
    """The file name a certificate for ``url`` has in ``sns_cert_cache_dir``."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest() + ".pem"


CertificateFetcher = Callable[[str], bytes]


class HttpsCertificateFetcher:
    """GET the PEM over https (certificate checked by httpx), no redirects, a short timeout."""

    def __init__(self, *, timeout_s: float = 5.0) -> None:
        self._timeout = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
            client = self._client
        try:
            response = client.get(url)
        except httpx.HTTPError as exc:
            raise SnsCertificateUnavailable(f"cannot fetch {url}: {exc}") from None
        if response.status_code != 200:
            raise SnsCertificateUnavailable(f"cannot fetch {url}: HTTP {response.status_code}")
        if len(response.content) > _MAX_CERT_BYTES:
            raise SnsCertificateUnavailable(f"cannot fetch {url}: answer too large")
        return bytes(response.content)


class SnsVerifier:
    """Checks SNS messages for one deployment; made once per process (certificates are cached)."""

    def __init__(self, *, topic_arns: Iterable[str], cert_host_pattern: str, max_age_s: float,
                 cert_cache_dir: str | Path | None = None, fetcher: CertificateFetcher | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.topic_arns = frozenset(topic_arns)
        self._host = re.compile(cert_host_pattern)
        self._max_age = timedelta(seconds=max_age_s)
        self._cache_dir = Path(cert_cache_dir) if cert_cache_dir else None
        self._fetch = fetcher or HttpsCertificateFetcher()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, fetcher: CertificateFetcher | None = None) -> SnsVerifier:
        return cls(topic_arns=settings.sns_topic_arns, cert_host_pattern=settings.sns_cert_host_pattern,
                   max_age_s=settings.sns_max_age_s, cert_cache_dir=settings.sns_cert_cache_dir, fetcher=fetcher)

    def verify_body(self, body: bytes | str) -> SnsMessage:
        """Parse and verify an HTTPS request body; the message when it is genuine."""
        message = parse_sns_message(body)
        self.verify(message)
        return message

    def verify(self, message: SnsMessage) -> None:
        """Raise SnsVerificationError unless ``message`` is signed by SNS for an allowed topic."""
        if message.TopicArn not in self.topic_arns:
            raise SnsVerificationError("topic", f"topic {message.TopicArn} is not in sns_topic_arns")
        self._check_time(message.sent_at)
        algorithm = _hash(message.SignatureVersion)
        if algorithm is None:
            raise SnsVerificationError("signature_version",
                                       f"unsupported SignatureVersion {message.SignatureVersion!r}")
        if message.Type not in MESSAGE_TYPES:
            raise SnsVerificationError("message_type", f"no signing rule for message type {message.Type!r}")
        self.check_cert_url(message.SigningCertURL)
        key = self._public_key(message.SigningCertURL)
        try:
            signature = base64.b64decode(message.Signature, validate=True)
        except (binascii.Error, ValueError):
            raise SnsVerificationError("signature", "Signature is not base64") from None
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SnsVerificationError("signature", f"signature of message {message.MessageId} does not match") \
                from None

    def check_cert_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise SnsVerificationError("cert_url", f"SigningCertURL is not https: {url}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        host = parts.hostname or ""
        if parts.username or parts.password or port not in (None, 443) or not self._host.fullmatch(host):
            raise SnsVerificationError("cert_host", f"SigningCertURL host is not trusted: {parts.netloc}")
        if not parts.path.endswith(".pem") or parts.query or parts.fragment:
            raise SnsVerificationError("cert_url", f"SigningCertURL is not a .pem file: {url}")

    def _check_time(self, sent_at: datetime) -> None:
        now = self._clock()
        if sent_at < now - self._max_age:
            raise SnsVerificationError("timestamp", f"message from {sent_at.isoformat()} is older than "
                                                    f"{self._max_age.total_seconds():.0f} s")
        if sent_at > now + _MAX_FUTURE_SKEW:
            raise SnsVerificationError("timestamp", f"message from {sent_at.isoformat()} is in the future")

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        from cryptography.hazmat.primitives.asymmetric import rsa

        cert = self._certs.get(url)
        if cert is None:
            cert = self._load(url)
            with self._lock:
                self._certs[url] = cert
        now = self._clock()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SnsVerificationError("certificate", f"certificate {url} is not valid now")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsVerificationError("certificate", f"certificate {url} does not hold an RSA key")
        return key

    def _load(self, url: str) -> x509.Certificate:
        from cryptography import x509

        pem: bytes | None = None
        if self._cache_dir is not None:
            path = self._cache_dir / cert_cache_name(url)
            if path.is_file():
                pem = path.read_bytes()
        if pem is None:
            logger.info("fetching SNS signing certificate %s", url)
            pem = self._fetch(url)
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsVerificationError("certificate", f"{url} is not a PEM certificate") from None


def topic_region(topic_arn: str) -> str | None:
    """The region in ``arn:aws:sns:<region>:<account>:<name>`` (None when it is not such an ARN)."""
    parts = topic_arn.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "sns" and parts[3]:
        return parts[3]
    return None


def confirm_subscription(settings: Settings, message: SnsMessage) -> str:
    """Confirm a verified SubscriptionConfirmation through the SNS API in the topic's region.

    The API call, rather than a GET of ``SubscribeURL``, keeps jetmail from ever requesting a URL
    that arrived in a request body. Returns the subscription ARN SNS answers with.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from jetmail.aws.clients import aws_client

    region = topic_region(message.TopicArn) or settings.aws_region
    regional = settings if region == settings.aws_region else settings.model_copy(update={"aws_region": region})
    try:
        answer: dict[str, Any] = aws_client("sns", regional).confirm_subscription(
            TopicArn=message.TopicArn, Token=message.Token)
    except (ClientError, BotoCoreError) as exc:
        raise SnsConfirmationFailed(f"ConfirmSubscription for {message.TopicArn} failed: {exc}") from None
    return str(answer.get("SubscriptionArn") or "")
