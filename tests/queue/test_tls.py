"""The job layer over TLS with a private CA: a real nats-server with a certificate made here, trusted through
``tls_ca_file`` or ``tls_ca_pem`` (the settings JETMAIL_NATS_TLS_CA_FILE and JETMAIL_NATS_TLS_CA_SECRET_ARN fill)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jetmail.config import Settings
from jetmail.devstack.stack import free_port, nats_server_binary, tcp_ready, wait_until
from jetmail.queue import QueueConfig, QueueError, SyncClient
from jetmail.services import queue_config


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("nats.jetmail.test")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A JetStream nats-server that speaks TLS only, with a certificate from a CA made here: (URL, CA file)."""
    folder = tmp_path_factory.mktemp("nats-tls")
    ca_key, ca = make_ca("jetmail test CA")
    key, cert = make_server_cert(ca_key, ca)
    (folder / "ca.pem").write_bytes(_pem(ca))
    (folder / "server.pem").write_bytes(_pem(cert))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    port = free_port()
    log = folder / "nats-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
                                 "-sd", str(folder / "js"), "--tls", "--tlscert", str(folder / "server.pem"),
                                 "--tlskey", str(folder / "server.key")], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(tcp_ready(port), timeout=20, what="nats-server (TLS)", proc=proc, log=log)
        yield f"nats://127.0.0.1:{port}", folder / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _round_trip(config: QueueConfig) -> None:
    with SyncClient(config) as client:
        client.ensure_streams(["tls"])
        client.enqueue("tls.ping", queue="tls", job_id="tls-ping-1")
        assert client.pending("tls")["normal"] >= 1


def test_the_job_layer_trusts_a_private_ca_from_a_file(tls_nats: tuple[str, Path]) -> None:
    # GIVEN a TLS-only nats-server and its CA in a file, named the way the settings name it
    url, ca_file = tls_nats
    settings = Settings(table_name="jetmail-tls", signing_secret="tls-test-signing-secret-0123456789abcdef",  # type: ignore[arg-type]
                        nats_url=url, nats_tls_ca_file=str(ca_file))
    # WHEN the job layer connects, makes its streams and enqueues  THEN it works over TLS
    _round_trip(queue_config(settings))


def test_the_job_layer_trusts_a_private_ca_given_as_pem_text(tls_nats: tuple[str, Path]) -> None:
    # GIVEN the CA as PEM text, as Secrets Manager gives it (JETMAIL_NATS_TLS_CA_SECRET_ARN)
    url, ca_file = tls_nats
    _round_trip(QueueConfig(nats_url=url, tls_ca_pem=ca_file.read_text()))


def test_a_server_signed_by_another_ca_is_refused(tls_nats: tuple[str, Path], tmp_path: Path) -> None:
    # GIVEN a CA that did not sign the server's certificate
    url, _ = tls_nats
    _, other = make_ca("someone else's CA")
    config = QueueConfig(nats_url=url, tls_ca_pem=_pem(other).decode(), connect_timeout=2)
    # WHEN the job layer connects  THEN it refuses, saying why
    with pytest.raises(QueueError, match="certificate"), SyncClient(config) as client:
        client.ensure_streams(["tls"])


def test_an_unreadable_ca_fails_with_a_clear_message(tls_nats: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = tls_nats
    config = QueueConfig(nats_url=url, tls_ca_file=str(tmp_path / "missing.pem"), connect_timeout=2)
    with pytest.raises(QueueError, match="NATS TLS CA"), SyncClient(config) as client:
        client.ensure_streams(["tls"])
