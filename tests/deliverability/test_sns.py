"""SNS signature verification and ``POST /sns/ses``.

Messages are signed at run time with a locally made RSA key whose self-signed certificate is
trusted through ``sns_cert_cache_dir`` (the file name is the SHA-256 of the SigningCertURL);
verification itself is never switched off. The canonical string is built here independently of
``jetmail.aws.sns``, from the SNS documentation.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.aws.clients import aws_client
from jetmail.aws.sns import (
    SnsCertificateUnavailable,
    SnsMessageInvalid,
    SnsVerificationError,
    SnsVerifier,
    parse_sns_message,
)
from jetmail.config import Settings, get_settings
from jetmail.devstack.stack import wait_until
from jetmail.messaging.messages import MessageStatus, SendRequest, new_message_id
from jetmail.services import Services
from stacktools import ReceiverServer

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "arn:aws:sns:us-east-1:123456789012:jetmail-ses-events"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-jetmailtest0000000000000.pem"
HOST_PATTERN = Settings.model_fields["sns_cert_host_pattern"].default
NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


def sns_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def certificate(key: rsa.RSAPrivateKey, *, valid_from: datetime, valid_to: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(valid_from).not_valid_after(valid_to)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SnsSigner:
    key: rsa.RSAPrivateKey
    cert_pem: bytes

    def sign(self, message: dict[str, Any], *, version: str = "2", cert_url: str = CERT_URL,
             leave_out: str | None = None) -> dict[str, Any]:
        """``message`` with SignatureVersion, SigningCertURL and a valid Signature (optionally over a
        string that leaves one key out, as a buggy signer would)."""
        signed = {**message, "SignatureVersion": version, "SigningCertURL": cert_url}
        keys = NOTIFICATION_KEYS if signed["Type"] == "Notification" else CONFIRMATION_KEYS
        text = "".join(f"{k}\n{signed[k]}\n" for k in keys if signed.get(k) is not None and k != leave_out)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303 - SNS SignatureVersion 1
        signed["Signature"] = base64.b64encode(self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)).decode()
        return signed


def new_signer() -> SnsSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    return SnsSigner(key, certificate(key, valid_from=now - timedelta(days=1), valid_to=now + timedelta(days=30)))


def trust(cert_dir: Path, url: str, pem: bytes) -> None:
    (cert_dir / (hashlib.sha256(url.encode()).hexdigest() + ".pem")).write_bytes(pem)


def sample(name: str, **replace: str) -> dict[str, Any]:
    text = (ROOT / "events" / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def notification(*, at: datetime | None = None, **replace: str) -> dict[str, Any]:
    """The sample HTTPS notification (an SES Delivery event, with a Subject), sent just now."""
    body = sample("sns_https_notification_unsigned.json", **replace)
    body["Timestamp"] = sns_time(at or datetime.now(UTC))
    return body


def confirmation(topic: str, *, kind: str = "SubscriptionConfirmation") -> dict[str, Any]:
    body = json.loads(json.dumps(sample("sns_https_subscription_confirmation_unsigned.json")).replace(TOPIC, topic))
    body["Type"] = kind
    body["Timestamp"] = sns_time(datetime.now(UTC))
    return body


@pytest.fixture(scope="module")
def signer() -> SnsSigner:
    return new_signer()


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory, signer: SnsSigner) -> Path:
    folder = tmp_path_factory.mktemp("sns-certs")
    trust(folder, CERT_URL, signer.cert_pem)
    return folder


class Fetches:
    """A certificate fetcher that serves one PEM and remembers every URL it was asked for."""

    def __init__(self, pem: bytes | None = None) -> None:
        self.pem = pem
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if self.pem is None:
            raise SnsCertificateUnavailable(f"cannot fetch {url}")
        return self.pem


def verifier(cert_dir: Path | None, *, fetcher: Fetches | None = None, max_age_s: float = 3600) -> SnsVerifier:
    return SnsVerifier(topic_arns=[TOPIC], cert_host_pattern=HOST_PATTERN, max_age_s=max_age_s,
                       cert_cache_dir=cert_dir, fetcher=fetcher or Fetches())


def rejection(check: Callable[[], object]) -> str:
    with pytest.raises(SnsVerificationError) as caught:
        check()
    return caught.value.reason


# ---------------------------------------------------------------- the verifier

@pytest.mark.parametrize("version", ["1", "2"])
def test_valid_signatures_pass(version: str, signer: SnsSigner, cert_dir: Path) -> None:
    fetches = Fetches()
    checker = verifier(cert_dir, fetcher=fetches)
    for body in (notification(), confirmation(TOPIC), confirmation(TOPIC, kind="UnsubscribeConfirmation")):
        message = checker.verify_body(json.dumps(signer.sign(body, version=version)))
        assert message.Type == body["Type"]
    assert fetches.urls == []  # the certificate came from the trusted folder


def test_subject_is_part_of_the_signed_string(signer: SnsSigner, cert_dir: Path) -> None:
    checker = verifier(cert_dir)
    with_subject = notification()
    assert with_subject["Subject"]
    checker.verify_body(json.dumps(signer.sign(with_subject)))
    # a signature over the string without the Subject (what moto produces) does not verify
    assert rejection(lambda: checker.verify_body(json.dumps(signer.sign(with_subject, leave_out="Subject")))) \
        == "signature"
    # without a Subject the key is left out of the string altogether (absent or null)
    without = {k: v for k, v in notification().items() if k != "Subject"}
    checker.verify_body(json.dumps(signer.sign(without)))
    checker.verify_body(json.dumps(signer.sign({**without, "Subject": None})))


def test_forged_signatures_are_rejected(signer: SnsSigner, cert_dir: Path) -> None:
    checker = verifier(cert_dir)
    tampered = signer.sign(notification())
    tampered["Message"] = tampered["Message"].replace("Delivery", "Bounce")
    assert rejection(lambda: checker.verify_body(json.dumps(tampered))) == "signature"
    # signed by somebody else's key but naming the trusted certificate
    stranger = new_signer().sign(notification())
    assert rejection(lambda: checker.verify_body(json.dumps(stranger))) == "signature"
    garbled = {**signer.sign(notification()), "Signature": "not base64 at all!"}
    assert rejection(lambda: checker.verify_body(json.dumps(garbled))) == "signature"
    # a type-confused message: a Notification signed as if it were a confirmation
    relabelled = {**signer.sign(confirmation(TOPIC)), "Type": "Notification"}
    assert rejection(lambda: checker.verify_body(json.dumps(relabelled))) == "signature"


@pytest.mark.parametrize("url", [
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://s3.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
    "https://someone@sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://SNS.US-EAST-1.AMAZONAWS.COM.evil.example/SimpleNotificationService-1.pem",
])
def test_untrusted_certificate_hosts_are_rejected_before_any_fetch(url: str, signer: SnsSigner,
                                                                    cert_dir: Path) -> None:
    fetches = Fetches(signer.cert_pem)
    trust(cert_dir, url, signer.cert_pem)  # even a certificate planted in the trusted folder is not used
    checker = verifier(cert_dir, fetcher=fetches)
    assert rejection(lambda: checker.verify_body(json.dumps(signer.sign(notification(), cert_url=url)))) \
        == "cert_host"
    assert fetches.urls == []


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.txt",
    "https://sns.us-east-1.amazonaws.com/?Action=Cert&x=.pem",
    "ftp://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
])
def test_certificate_urls_must_be_https_pem_files(url: str, signer: SnsSigner, cert_dir: Path) -> None:
    fetches = Fetches(signer.cert_pem)
    checker = verifier(cert_dir, fetcher=fetches)
    assert rejection(lambda: checker.verify_body(json.dumps(signer.sign(notification(), cert_url=url)))) \
        == "cert_url"
    assert fetches.urls == []


def test_china_regions_are_trusted_hosts(signer: SnsSigner) -> None:
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem"
    fetches = Fetches(signer.cert_pem)
    verifier(None, fetcher=fetches).verify_body(json.dumps(signer.sign(notification(), cert_url=url)))
    assert fetches.urls == [url]


def test_stale_and_future_messages_are_rejected(signer: SnsSigner, cert_dir: Path) -> None:
    checker = verifier(cert_dir, max_age_s=3600)
    now = datetime.now(UTC)
    checker.verify_body(json.dumps(signer.sign(notification(at=now - timedelta(minutes=59)))))
    checker.verify_body(json.dumps(signer.sign(notification(at=now + timedelta(minutes=2)))))
    for at in (now - timedelta(minutes=61), now - timedelta(days=400), now + timedelta(minutes=10)):
        assert rejection(lambda at=at: checker.verify_body(json.dumps(signer.sign(notification(at=at))))) \
            == "timestamp"


def test_topics_outside_the_allow_list_are_rejected(signer: SnsSigner, cert_dir: Path) -> None:
    fetches = Fetches(signer.cert_pem)
    checker = verifier(None, fetcher=fetches)
    foreign = signer.sign(notification(**{TOPIC: "arn:aws:sns:us-east-1:999999999999:somebody-else"}))
    assert rejection(lambda: checker.verify_body(json.dumps(foreign))) == "topic"
    assert fetches.urls == []  # refused before fetching anything
    nobody = SnsVerifier(topic_arns=[], cert_host_pattern=HOST_PATTERN, max_age_s=3600, cert_cache_dir=cert_dir)
    assert rejection(lambda: nobody.verify_body(json.dumps(signer.sign(notification())))) == "topic"


def test_unknown_signature_versions_and_types_are_rejected(signer: SnsSigner, cert_dir: Path) -> None:
    checker = verifier(cert_dir)
    v3 = {**signer.sign(notification()), "SignatureVersion": "3"}
    assert rejection(lambda: checker.verify_body(json.dumps(v3))) == "signature_version"
    odd = signer.sign({**notification(), "Type": "Announcement"})
    assert rejection(lambda: checker.verify_body(json.dumps(odd))) == "message_type"


def test_certificate_is_fetched_once_and_cached(signer: SnsSigner) -> None:
    fetches = Fetches(signer.cert_pem)
    checker = verifier(None, fetcher=fetches)
    for _ in range(3):
        checker.verify_body(json.dumps(signer.sign(notification())))
    assert fetches.urls == [CERT_URL]


def test_certificates_that_are_not_valid_now_or_not_pem_are_rejected(signer: SnsSigner) -> None:
    now = datetime.now(UTC)
    expired = certificate(signer.key, valid_from=now - timedelta(days=30), valid_to=now - timedelta(days=1))
    checker = verifier(None, fetcher=Fetches(expired))
    assert rejection(lambda: checker.verify_body(json.dumps(signer.sign(notification())))) == "certificate"
    junk = verifier(None, fetcher=Fetches(b"<html>not a certificate</html>"))
    assert rejection(lambda: junk.verify_body(json.dumps(signer.sign(notification())))) == "certificate"


def test_an_unreachable_certificate_is_a_temporary_failure(signer: SnsSigner) -> None:
    checker = verifier(None, fetcher=Fetches(None))
    with pytest.raises(SnsCertificateUnavailable):
        checker.verify_body(json.dumps(signer.sign(notification())))


@pytest.mark.parametrize("body", [
    b"",
    b"{not json",
    b"\xff\xfe",
    b"[1, 2, 3]",
    json.dumps({"Type": "Notification"}).encode(),
    json.dumps({k: v for k, v in sample("sns_https_notification_unsigned.json").items() if k != "Signature"}).encode(),
    json.dumps({**sample("sns_https_notification_unsigned.json"), "Timestamp": "yesterday"}).encode(),
    json.dumps({k: v for k, v in sample("sns_https_subscription_confirmation_unsigned.json").items()
                if k != "Token"}).encode(),
])
def test_malformed_bodies_are_invalid_not_forged(body: bytes) -> None:
    with pytest.raises(SnsMessageInvalid):
        parse_sns_message(body)


# ---------------------------------------------------------------- POST /sns/ses on the local stack

@pytest.fixture(scope="module")
def moto_topics(settings: Settings, unique_module: str) -> dict[str, str]:
    """Two topics in the local SNS (moto): one jetmail allows, one it does not."""
    sns = aws_client("sns", settings)
    allowed = sns.create_topic(Name=f"jetmail-ses-events-{unique_module}")["TopicArn"]
    foreign = sns.create_topic(Name=f"somebody-else-{unique_module}")["TopicArn"]
    return {"allowed": allowed, "foreign": foreign}


@pytest.fixture(scope="module")
def unique_module() -> str:
    import uuid

    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def sns_services(settings: Settings, services: Services, cert_dir: Path, moto_topics: dict[str, str]) -> Services:
    return Services(settings.model_copy(update={"sns_topic_arns": [TOPIC, moto_topics["allowed"]],
                                                "sns_cert_cache_dir": str(cert_dir)}))


@pytest.fixture(scope="module")
def client(sns_services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(sns_services.settings, services=sns_services)) as test_client:
        yield test_client


def post(client: TestClient, body: dict[str, Any] | bytes) -> httpx.Response:
    # SNS sends its JSON as text/plain and, from moto, without any x-amz-sns-* header
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/sns/ses", content=content, headers={"content-type": "text/plain; charset=UTF-8"})


def sent_message(services: Services, to: str) -> str:
    message_id = new_message_id()
    repo = services.messages.messages
    services.table.put(repo.record(message_id, request=SendRequest(template="welcome", to=to),
                                   status=MessageStatus.SENT))
    return message_id


def test_signed_notification_is_processed_once(client: TestClient, sns_services: Services, signer: SnsSigner,
                                               unique: str) -> None:
    # GIVEN a sent message and a signed SNS notification of its SES Delivery event
    to = f"https-{unique}@example.com"
    message_id = sent_message(sns_services, to)
    body = signer.sign(notification(msg_example=message_id, **{"ada@example.com": to}))
    # WHEN SNS posts it, and posts it again
    first, second = post(client, body), post(client, body)
    # THEN it is applied once and recognised the second time
    assert first.status_code == 200, first.text
    assert first.json() == {"type": "Notification", "status": "processed", "message_id": body["MessageId"],
                            "outcomes": {"applied": 1}, "subscription_arn": None}
    assert second.status_code == 200 and second.json()["outcomes"] == {"duplicate": 1}
    assert sns_services.messages.get(message_id).status == "delivered"


def _forged(signer: SnsSigner, body: dict[str, Any]) -> dict[str, Any]:
    # the same SES event with one detail changed after signing
    signed = signer.sign(body)
    signed["Message"] = signed["Message"].replace("250 2.6.0 Message received", "250 OK")
    return signed


UNTRUSTED: dict[str, Callable[[SnsSigner, dict[str, Any]], dict[str, Any]]] = {
    "forged signature": _forged,
    "stranger's key": lambda signer, body: new_signer().sign(body),
    "untrusted cert host": lambda signer, body: signer.sign(
        body, cert_url="https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem"),
    "http cert url": lambda signer, body: signer.sign(
        body, cert_url="http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem"),
    "stale timestamp": lambda signer, body: signer.sign(
        {**body, "Timestamp": sns_time(datetime.now(UTC) - timedelta(hours=2))}),
    "topic not allowed": lambda signer, body: signer.sign(
        {**body, "TopicArn": "arn:aws:sns:us-east-1:999999999999:somebody-else"}),
}


@pytest.mark.parametrize("case", list(UNTRUSTED))
def test_untrusted_notifications_are_refused_and_record_nothing(case: str, client: TestClient,
                                                                sns_services: Services, signer: SnsSigner,
                                                                unique: str) -> None:
    # GIVEN a sent message and an SNS notification of its SES Delivery event that fails one check
    to = f"forged-{unique}@example.com"
    message_id = sent_message(sns_services, to)
    genuine = notification(msg_example=message_id, **{"ada@example.com": to})
    # WHEN it is posted
    answer = post(client, UNTRUSTED[case](signer, genuine))
    # THEN it is refused and nothing changed: the message is still "sent", and the same event,
    # genuinely signed, is applied afterwards rather than found recorded already
    assert answer.status_code == 403, answer.text
    assert answer.json()["status"] == 403
    assert sns_services.messages.get(message_id).status == "sent"
    after = post(client, signer.sign(genuine))
    assert after.status_code == 200 and after.json()["outcomes"] == {"applied": 1}, after.text


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"", json.dumps({"Type": "Notification"}).encode(),
                                  # nested 10,000 deep: refused by depth, never a RecursionError (500)
                                  b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000])
def test_malformed_bodies_are_400(body: bytes, client: TestClient) -> None:
    answer = post(client, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["status"] == 400


def test_a_verified_notification_that_is_not_an_ses_event_is_400(client: TestClient, signer: SnsSigner) -> None:
    body = signer.sign({**notification(), "Message": '{"hello": "world"}'})
    answer = post(client, body)
    assert answer.status_code == 400 and "SES" in answer.json()["detail"]


def test_subscription_confirmation_for_an_allowed_topic_is_confirmed_through_sns(
        client: TestClient, signer: SnsSigner, moto_topics: dict[str, str]) -> None:
    # GIVEN a signed SubscriptionConfirmation for a topic in JETMAIL_SNS_TOPIC_ARNS that exists in SNS
    body = signer.sign(confirmation(moto_topics["allowed"]), version="1")
    # WHEN SNS posts it
    answer = post(client, body)
    # THEN jetmail confirms it with the ConfirmSubscription API and reports the subscription ARN.
    # (moto accepts any token for an existing topic and answers a fixed subscription id, so this shows the
    # call is made with the topic and its answer handled; it cannot show a wrong token being refused.)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "confirmed"
    assert answer.json()["subscription_arn"].startswith(moto_topics["allowed"] + ":")


def test_confirmation_that_sns_refuses_is_502(client: TestClient, signer: SnsSigner) -> None:
    # TOPIC is allowed but does not exist in the local SNS: the ConfirmSubscription call really goes out
    answer = post(client, signer.sign(confirmation(TOPIC)))
    assert answer.status_code == 502, answer.text


def test_subscription_confirmation_for_a_foreign_topic_is_refused(
        client: TestClient, signer: SnsSigner, moto_topics: dict[str, str]) -> None:
    answer = post(client, signer.sign(confirmation(moto_topics["foreign"])))
    assert answer.status_code == 403, answer.text
    assert "topic" in answer.json()["detail"]


def test_unsubscribe_confirmation_is_ignored(client: TestClient, signer: SnsSigner) -> None:
    answer = post(client, signer.sign(confirmation(TOPIC, kind="UnsubscribeConfirmation")))
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"


def test_the_route_needs_no_api_key_and_is_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/sns/ses"]["post"]
    assert "security" not in operation
    assert {"400", "403"} <= set(operation["responses"])


# ---------------------------------------------------------------- interoperability with moto's signer

class _Capture(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_notification_signed_by_moto_verifies(settings: Settings, sns_services: Services, client: TestClient,
                                                unique: str) -> None:
    # GIVEN an HTTP endpoint subscribed to the allowed topic in moto, which signs what it delivers
    bodies: list[bytes] = []
    handler = type("Capture", (_Capture,), {"bodies": bodies})
    server = ReceiverServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sns = aws_client("sns", settings)
        topic = sns_services.settings.sns_topic_arns[1]
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"http://127.0.0.1:{server.server_port}/sns")
        to = f"moto-{unique}@example.com"
        message_id = sent_message(sns_services, to)
        ses = sample("ses_event_delivery.json", msg_example=message_id, **{"ada@example.com": to})
        # WHEN SES's JSON is published (moto signs the Subject wrongly, so none is set)
        sns.publish(TopicArn=topic, Message=ses["Records"][0]["Sns"]["Message"])
        wait_until(lambda: bool(bodies), timeout=10, what="moto's SNS delivery")
    finally:
        server.shutdown()
        server.server_close()
    delivered = json.loads(bodies[-1])
    # moto serves the certificate of its key; trust it as an operator would pre-seed one
    path = delivered["SigningCertURL"].split(".amazonaws.com", 1)[1]
    pem = httpx.get(f"{settings.aws_endpoint_url}{path}", headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=local/20250101/us-east-1/sns/aws4_request, "
                         "SignedHeaders=host, Signature=0"}).content
    trust(Path(str(sns_services.settings.sns_cert_cache_dir)), delivered["SigningCertURL"], pem)
    # THEN jetmail verifies moto's signature (SignatureVersion 2) and applies the event
    answer = post(client, bodies[-1])
    assert answer.status_code == 200, answer.text
    assert delivered["SignatureVersion"] == "2" and answer.json()["outcomes"] == {"applied": 1}
    assert sns_services.messages.get(message_id).status == "delivered"


# ---------------------------------------------------------------- the Lambda function serves the route too

class LambdaContext:
    function_name = "jetmail-ses-events-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jetmail-ses-events-test"
    aws_request_id = "test-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def test_the_ses_events_function_answers_post_sns_ses(app_env: dict[str, str], services: Services,
                                                      cert_dir: Path, signer: SnsSigner,
                                                      monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    # GIVEN the function loaded with the allowed topic and the trusted certificate folder in its environment
    for key, value in app_env.items():
        if key.startswith(("JETMAIL_", "AWS_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("JETMAIL_SNS_TOPIC_ARNS", TOPIC)
    monkeypatch.setenv("JETMAIL_SNS_CERT_CACHE_DIR", str(cert_dir))
    get_settings.cache_clear()
    try:
        spec = importlib.util.spec_from_file_location("lambda_ses_events_http",
                                                      ROOT / "functions" / "ses_events" / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        get_settings.cache_clear()
    to = f"lambda-https-{unique}@example.com"
    message_id = sent_message(services, to)
    body = json.dumps(signer.sign(notification(msg_example=message_id, **{"ada@example.com": to})))
    request = sample("sns_https_request.json")
    request["body"] = body
    # WHEN API Gateway invokes it twice with the same POST /sns/ses (warm)
    first = module.handler(request, LambdaContext())
    second = module.handler(request, LambdaContext())
    # THEN the event is applied once; a forged copy is refused
    assert first["statusCode"] == 200, first
    assert json.loads(first["body"])["outcomes"] == {"applied": 1}
    assert json.loads(second["body"])["outcomes"] == {"duplicate": 1}
    forged = json.loads(body)
    forged["Message"] = forged["Message"].replace('"Delivery"', '"Bounce"')
    refused = module.handler({**request, "body": json.dumps(forged)}, LambdaContext())
    assert refused["statusCode"] == 403
    assert services.messages.get(message_id).status == "delivered"
