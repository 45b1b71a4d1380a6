"""A private Postfix instance for tests that need a real MTA's bounces (Debian's `postfix`, run as root).

Its own config, queue and data folders under a temporary folder, an smtpd on a free loopback port, no
DNS; the default instance is never started or stopped, and its main.cf and master.cf are never read.
It accepts any recipient at ``LOCAL_DOMAIN`` (``local_recipient_maps`` is empty), so mail for a user that
does not exist is accepted at RCPT and bounced afterwards by local(8) with a real RFC 3464 DSN, as a
remote MTA does; the DSN goes to the envelope sender, and mail for ``relay_domain`` is handed by SMTP to
``relay_to``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jetmail.devstack.stack import free_port, wait_until

LOCAL_DOMAIN = "mta-test.example.net"  # an address the API accepts (no special-use TLD)
_MASTER = "/usr/lib/postfix/sbin/master"
_DEBIAN_META = Path("/etc/postfix")  # postfix-files and friends: read, never written

# Every daemon runs unchrooted (a chroot would need copies of /etc files in the queue folder); smtpd
# listens on the instance's own port only. One line per service Postfix needs to accept, bounce and relay.
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# (folder, group, mode) of the queue's folders, as Debian's postfix-files has them; owner postfix
_QUEUE_FOLDERS = (
    ("public", "postdrop", 0o710), ("private", "root", 0o700), ("maildrop", "postdrop", 0o730),
    *((name, "root", 0o700) for name in ("incoming", "active", "bounce", "defer", "deferred", "flush",
                                         "hold", "corrupt", "saved", "trace")),
)

_MAIN_CF = """\
compatibility_level = 3.6
meta_directory = {meta}
config_directory = {root}/conf
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
syslog_name = postfix-jetmail-test
myhostname = mta.{domain}
mydomain = {domain}
myorigin = {domain}
mydestination = {domain}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# accept every local part at RCPT: local(8) bounces unknown users afterwards with a DSN
local_recipient_maps =
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
transport_maps = inline:{{ {relay_domain}=smtp:[{relay_host}]:{relay_port} }}
# no DNS anywhere, and no waiting: tests wait on the mail itself
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 1m
bounce_queue_lifetime = 1m
in_flow_delay = 0
smtp_connect_timeout = 5s
"""


class PostfixInstance:
    """One private Postfix: ``port`` is its smtpd; ``maillog`` explains what it did."""

    def __init__(self, root: Path, *, relay_domain: str, relay_to: tuple[str, int]) -> None:
        self.root = root
        self.port = free_port()
        self.maillog = root / "maillog"
        self._master: int | None = None
        conf = root / "conf"
        conf.mkdir(parents=True)
        relay_host, relay_port = relay_to
        (conf / "main.cf").write_text(_MAIN_CF.format(
            meta=_DEBIAN_META, root=root, domain=LOCAL_DOMAIN, relay_domain=relay_domain,
            relay_host=relay_host, relay_port=relay_port))
        (conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        # Postfix re-reads a config file younger than a couple of seconds until it has aged (it may be
        # mid-edit): dated a minute back, it is read once
        aged = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(conf / name, (aged, aged))
        # the folders `postfix check` would make (with Debian's owners and modes), made directly: that
        # check takes seconds, the master itself starts in a few milliseconds
        (root / "data").mkdir(mode=0o700)
        shutil.chown(root / "data", "postfix")
        queue = root / "queue"
        queue.mkdir(mode=0o755)
        (queue / "pid").mkdir(mode=0o755)
        for name, group, mode in _QUEUE_FOLDERS:
            folder = queue / name
            folder.mkdir()
            folder.chmod(mode)
            shutil.chown(folder, "postfix", group)

    def start(self) -> PostfixInstance:
        # MAIL_CONFIG would be inherited by a default instance's commands: the folder goes by -c only
        env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
        # -w: the command returns once the master daemon runs (it detaches into a session of its own)
        done = subprocess.run([_MASTER, "-c", str(self.root / "conf"), "-w"], env=env, capture_output=True,
                              text=True, timeout=30, check=False)
        pid_file = self.root / "queue" / "pid" / "master.pid"
        if pid_file.exists():
            self._master = int(pid_file.read_text().strip())
        if done.returncode != 0 or self._master is None:
            raise RuntimeError(f"private postfix did not start: {done.stdout}{done.stderr}{self.log()}")
        wait_until(self._listening, timeout=15, what="private postfix smtpd")
        return self

    def stop(self) -> None:
        """Kill the master and its daemons (one process group: the master leads its own session)."""
        pid, self._master = self._master, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), timeout=15, what="private postfix to stop")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                return conn.recv(4).startswith(b"220")
        except OSError:
            return False

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def skip_reason() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not Path(_MASTER).exists():
        return "Debian's postfix is not installed (`make postfix` installs it when run as root)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its daemons switch to the postfix user)"
    return None


@contextmanager
def private_postfix(*, relay_domain: str, relay_to: tuple[str, int]) -> Iterator[PostfixInstance]:
    """A running private Postfix that relays mail for ``relay_domain`` to ``relay_to``; stopped after."""
    if reason := skip_reason():
        pytest.skip(reason)
    # not under pytest's 0700 tmp folder: Postfix's daemons run as the postfix user and must reach it
    root = Path(tempfile.mkdtemp(prefix="jetmail-postfix-"))
    root.chmod(0o755)
    instance = PostfixInstance(root, relay_domain=relay_domain, relay_to=relay_to)
    try:
        instance.start()
    except Exception:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
