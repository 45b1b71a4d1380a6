"""Postfix's ``smtp-sink`` for the benchmarks: found, installed when possible, started on a free port.

``smtp-sink`` answers every SMTP command at C speed and discards the mail, so it shows what jetmail's
sending side can do; jetmail's own Python sink (``jetmail.devstack.smtp_sink``) writes every message
to disk and is slower than the sender it measures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from jetmail.devstack.stack import free_port, tcp_ready, wait_until

SMTP_SINK = Path("/usr/sbin/smtp-sink")
MSG_COUNT = re.compile(rb"mesg=(\d+)")
# smtp-sink prints its counters after every message; read them every 5 ms, not once a message, so the bench's own
# reading (a wake-up and a parse per message: ~6 % of both cores' time at 1,500 emails/s) stays off the cores the
# campaign it times needs. Arrival times are at most this late.
READ_EVERY_S = 0.005


def find_smtp_sink() -> str | None:
    if SMTP_SINK.exists():
        return str(SMTP_SINK)
    return shutil.which("smtp-sink")


def install_smtp_sink() -> str:
    """Install Debian's postfix package (which ships smtp-sink) without prompts and without configuring or
    starting a mail server; returns what happened, for the report."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not installed: installing postfix needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # "No configuration": the package installs its binaries but no main.cf, so no daemon starts
    subprocess.run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n",
                   text=True, env=env, check=False, capture_output=True)
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"]
    for attempt in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode == 0 and find_smtp_sink():
            return "installed now with apt-get (package postfix)"
        if attempt == 0:  # a stale package list is the usual cause
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
    return f"not installed: apt-get install postfix failed: {done.stderr.strip()[-300:]}"


def start_smtp_sink(binary: str, *, counters: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """``counters``: smtp-sink prints its running counters (``-c``) to a pipe, for ``SinkClock``."""
    port = free_port()
    # as root, smtp-sink insists on dropping privileges after binding (-u)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([binary, *user, *(["-c"] if counters else []), f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.PIPE if counters else subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_until(tcp_ready(port), timeout=10, what="smtp-sink", proc=proc)
    return proc, port


class SinkClock:
    """When each message reached smtp-sink: its ``-c`` counters (``mesg=<n>`` after every final ``.``),
    read every ``READ_EVERY_S``. ``at(n)`` is the time the n-th message since start arrived (to the
    resolution of one read of the pipe, 5 ms)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._times: list[float] = []  # [i]: when message i+1 arrived
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        tail = b""
        while chunk := self._stream.read1(65536):  # type: ignore[attr-defined]
            now = time.time()
            *lines, tail = (tail + chunk).split(b"\r")
            count = next((int(m.group(1)) for m in map(MSG_COUNT.search, reversed(lines)) if m), 0)
            if count > len(self._times):
                with self._changed:
                    self._times.extend([now] * (count - len(self._times)))
                    self._changed.notify_all()
            time.sleep(READ_EVERY_S)

    @property
    def count(self) -> int:
        return len(self._times)

    def at(self, n: int, *, timeout: float = 600.0) -> float:
        """When the n-th message (1-based) arrived; waits for it up to ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._times) >= n, timeout=timeout):
                raise TimeoutError(f"smtp-sink has {len(self._times)} messages, not {n}")
            return self._times[n - 1]
