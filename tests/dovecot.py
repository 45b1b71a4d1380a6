"""A private Dovecot IMAP server for the bounce mailbox poller's tests (Debian's `dovecot-imapd`, run as root).

Its own config, state, run and mail folders under a temporary folder, IMAP over TLS only (a self-signed
certificate the test trusts), one user from a password file, on a free loopback port: the default
instance (``/etc/dovecot``) is never read, started or stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jetmail.devstack.stack import free_port, wait_until

DOVECOT = "/usr/sbin/dovecot"
USER = "bounces"
PASSWORD = "a-mailbox-password-for-tests"

_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem
auth_mechanisms = plain login
first_valid_uid = 1
mail_uid = dovecot
mail_gid = dovecot
mail_location = maildir:{root}/mail/%u
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
"""


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA: a client trusts it with ``cafile=``) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class DovecotInstance:
    """One private Dovecot: IMAP over TLS on ``port``; ``cert`` is the CA file a client trusts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.log = root / "dovecot.log"
        self.conf = root / "dovecot.conf"
        self.cert, key = _self_signed(root)
        self.conf.write_text(_CONF.format(root=root, cert=self.cert, key=key, port=self.port))
        (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        for name in ("run", "state", "mail"):
            (root / name).mkdir()
        shutil.chown(root / "mail", "dovecot", "dovecot")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DovecotInstance:
        # -F: in the foreground, our child, in a process group of its own that stop() ends
        self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._greets, timeout=15, what="private dovecot", proc=self._proc, log=self.log)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)

    def _greets(self) -> bool:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only "is it up": the poller under test checks the certificate
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw, \
                    context.wrap_socket(raw) as conn:
                return conn.recv(64).startswith(b"* OK")
        except OSError:
            return False


def skip_reason() -> str | None:
    if not Path(DOVECOT).exists():
        return "Debian's dovecot-imapd is not installed (`make dovecot` installs it when run as root)"
    if os.geteuid() != 0:
        return "a private Dovecot needs root (its processes switch to the dovecot users)"
    return None


@contextmanager
def private_dovecot() -> Iterator[DovecotInstance]:
    """A running private Dovecot serving ``USER`` / ``PASSWORD`` over TLS; stopped after."""
    if reason := skip_reason():
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="jetmail-dovecot-"))  # not pytest's 0700 folder: dovecot's users read it
    root.chmod(0o755)
    instance = DovecotInstance(root)
    try:
        yield instance.start()
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
