"""A local 3-node NATS JetStream cluster built from the production configuration in ``infra/nats/``.

Each node gets a copy of ``infra/nats/common.conf`` and of its ``nats-N.conf`` with only what cannot be the
same on one machine rewritten: listen addresses and ports (loopback, free ports), the store directory and the
routes. TLS blocks are removed (loopback only); accounts, users, permissions, placement tags and JetStream
limits stay as deployed, so the job layer runs here under the same ``api`` / ``worker`` permissions it has in
production. A change to ``infra/nats/`` that the rewrite no longer recognises fails loudly.

Used by the cluster test and by fault-injection runs::

    with NatsCluster(tmp / "cluster") as cluster:
        env = {"JETMAIL_NATS_URL": cluster.url, **cluster.client_env("worker")}
        ...
        cluster.kill("nats-2")       # SIGKILL, as a crashed node
        cluster.restart("nats-2")    # back with its store, rejoins the cluster

and ``start_worker(env, log=...)`` runs a real ``jetmail worker`` against it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from jetmail.devstack.stack import (
    StackError,
    exited,
    free_port,
    http_ready,
    nats_server_binary,
    pid_alive,
    stop_process,
    wait_until,
)

INFRA_NATS_DIR = Path(__file__).resolve().parents[3] / "infra" / "nats"
# the password variables common.conf reads from the environment (user "admin" is the system account's)
PASSWORD_VARS = {"api": "NATS_API_PASSWORD", "worker": "NATS_WORKER_PASSWORD", "admin": "NATS_SYS_PASSWORD"}
log = logging.getLogger("jetmail.devstack")
_PRODUCTION_DNS = re.compile(r'"nats-route://(nats-\d+)\.jetmail\.internal:6222"')


@dataclass
class ClusterNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    config: Path
    store: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and pid_alive(self.proc.pid)


@dataclass
class StreamPlacement:
    name: str
    replicas: int
    leader: str | None = None
    hosts: set[str] = field(default_factory=set)


def strip_blocks(text: str, key: str) -> str:
    """Remove every ``key { ... }`` block (braces balanced; NATS config comments hold no braces)."""
    out: list[str] = []
    pos = 0
    pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*\{{", re.MULTILINE)
    while (match := pattern.search(text, pos)) is not None:
        out.append(text[pos:match.start()])
        depth, i = 1, match.end()
        while depth:
            if i >= len(text):
                raise StackError(f"unbalanced braces in the {key!r} block")
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


def _replace_once(text: str, old: str, new: str, *, what: str) -> str:
    if text.count(old) != 1:
        raise StackError(f"infra/nats/common.conf: expected one {old!r} ({what}); update devstack/cluster.py")
    return text.replace(old, new)


def local_common_conf(common: str, *, node: ClusterNode, routes: dict[str, int]) -> str:
    """``common.conf`` for one loopback node: no TLS, its own ports and store, routes to the others."""
    text = strip_blocks(common, "tls")
    text = _replace_once(text, 'listen: "0.0.0.0:4222"', f'listen: "127.0.0.1:{node.client_port}"',
                         what="client listen")
    text = _replace_once(text, 'listen: "0.0.0.0:6222"', f'listen: "127.0.0.1:{node.cluster_port}"',
                         what="cluster listen")
    text = _replace_once(text, 'http: "0.0.0.0:8222"', f'http: "127.0.0.1:{node.monitor_port}"', what="monitoring")
    text = _replace_once(text, 'store_dir: "/data/jetstream"', f'store_dir: "{node.store}"', what="store_dir")
    # small limits: the production ones would reserve more than a laptop or CI runner has
    text = re.sub(r"max_memory_store: \S+", "max_memory_store: 256MB", text)
    text = re.sub(r"max_file_store: \S+", "max_file_store: 2GB", text)
    text = re.sub(r"max_memory: \S+", "max_memory: 128MB", text)
    text = re.sub(r"max_file: \S+", "max_file: 1GB", text)
    names = _PRODUCTION_DNS.findall(text)
    if sorted(names) != sorted(routes):
        raise StackError(f"infra/nats/common.conf routes {names} do not match the nodes {sorted(routes)}")
    return _PRODUCTION_DNS.sub(lambda m: f'"nats-route://127.0.0.1:{routes[m.group(1)]}"', text)


def nats_string(value: str) -> str:
    """``value`` as a quoted string of the NATS configuration language. nats-server reads a ``$VARIABLE``'s
    value as configuration, so an unquoted password such as ``12-ab`` (a date), ``7.5x`` (a float), ``64kb``
    (a size) or ``true`` would not be read as the string it is, or stop the server."""
    return json.dumps(value)


def _port_taken(log_file: Path) -> bool:
    """Whether a node's log says it could not bind a port another process had taken."""
    return log_file.exists() and "address already in use" in log_file.read_text(errors="replace")


class NatsCluster:
    """Three (or ``size``) nats-server processes forming the ``jetmail`` JetStream cluster on loopback."""

    def __init__(self, root: Path | str, *, size: int = 3, infra_dir: Path | str = INFRA_NATS_DIR) -> None:
        self.root = Path(root)
        self.infra_dir = Path(infra_dir)
        if not (self.infra_dir / "common.conf").exists():
            raise StackError(f"no NATS cluster configuration at {self.infra_dir} (needs a repository checkout)")
        self.passwords = {user: secrets.token_urlsafe(18) for user in PASSWORD_VARS}
        self.nodes: dict[str, ClusterNode] = {}
        for n in range(1, size + 1):
            name = f"nats-{n}"
            if not (self.infra_dir / f"{name}.conf").exists():
                raise StackError(f"no {name}.conf in {self.infra_dir}")
            folder = self.root / name
            self.nodes[name] = ClusterNode(name=name, client_port=free_port(), cluster_port=free_port(),
                                           monitor_port=free_port(), config=folder / f"{name}.conf",
                                           store=(folder / "jetstream").resolve(), log=folder / "nats-server.log")

    # ---- addresses and credentials
    @property
    def url(self) -> str:
        """Every node's client URL, comma separated: the form ``JETMAIL_NATS_URL`` takes."""
        return ",".join(node.url for node in self.nodes.values())

    def client_env(self, user: str = "worker") -> dict[str, str]:
        """``JETMAIL_*`` settings for a jetmail process connecting as ``user`` (``api`` or ``worker``)."""
        return {"JETMAIL_NATS_URL": self.url, "JETMAIL_NATS_USER": user,
                "JETMAIL_NATS_PASSWORD": self.passwords[user]}

    # ---- lifecycle
    def write_configs(self) -> None:
        common = (self.infra_dir / "common.conf").read_text()
        routes = {name: node.cluster_port for name, node in self.nodes.items()}
        for name, node in self.nodes.items():
            node.config.parent.mkdir(parents=True, exist_ok=True)
            (node.config.parent / "common.conf").write_text(local_common_conf(common, node=node, routes=routes))
            own = (self.infra_dir / f"{name}.conf").read_text()
            if "include ./common.conf" not in own:
                raise StackError(f"{name}.conf no longer includes ./common.conf; update devstack/cluster.py")
            node.config.write_text(own)

    def start(self, *, timeout: float = 60.0, attempts: int = 3) -> NatsCluster:
        """Start every node and wait until each reports JetStream ready (which needs a meta-leader) and the
        meta-leader counts every other node as a current peer (before that, a stream of three replicas
        cannot be placed: "no suitable peers for placement, peer offline"). A port picked free and taken by
        another process before its node bound it ends that node at once: the cluster then starts again on new
        ports, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            self.write_configs()
            for name in self.nodes:
                self._spawn(name)
            try:
                for name in self.nodes:
                    self._wait_ready(name, timeout=timeout)
                wait_until(self._every_peer_current, timeout=timeout,
                           what="every node a current peer of the meta-leader")
                return self
            except StackError:
                lost = [n.name for n in self.nodes.values() if not n.alive and _port_taken(n.log)]
                if not lost or attempt == attempts:
                    raise
                log.warning("NATS cluster: a port of %s was taken before it was bound; starting again on new ports",
                            ", ".join(lost))
                self.stop()
                self._new_ports()
        raise AssertionError("unreachable")

    def _new_ports(self) -> None:
        """Every node on newly picked ports, with an empty store (the failed start's peers are forgotten)."""
        for node in self.nodes.values():
            node.client_port, node.cluster_port, node.monitor_port = free_port(), free_port(), free_port()
            node.proc = None
            shutil.rmtree(node.store, ignore_errors=True)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal one node (SIGKILL by default: no lame duck, no goodbye to the routes) and reap it."""
        node = self.nodes[name]
        if node.proc is None or node.proc.poll() is not None:
            return
        os.killpg(node.proc.pid, sig)
        node.proc.wait(timeout=30)

    def restart(self, name: str, *, timeout: float = 60.0) -> None:
        """Start a stopped node again on its ports and store; it rejoins and catches its replicas up."""
        if self.nodes[name].alive:
            raise StackError(f"{name} is still running")
        self._spawn(name)
        self._wait_ready(name, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after a grace period) and reap it."""
        for node in self.nodes.values():
            if node.proc is not None:
                stop_process(node.proc.pid)
                node.proc.wait(timeout=5)

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- inspection
    def jsz(self, name: str) -> dict[str, Any]:
        """A node's ``/jsz`` report (streams, meta-leader, cluster peers)."""
        url = f"http://127.0.0.1:{self.nodes[name].monitor_port}/jsz?streams=true&config=true"
        with urllib.request.urlopen(url, timeout=5) as resp:
            report: dict[str, Any] = json.loads(resp.read())
        return report

    def streams(self, *, account: str = "JETMAIL") -> dict[str, StreamPlacement]:
        """Every stream (KV buckets included) of ``account`` on the live nodes: replicas, leader, hosts."""
        found: dict[str, StreamPlacement] = {}
        for name, node in self.nodes.items():
            if not node.alive:
                continue
            try:
                report = self.jsz(name)
            except OSError:
                continue
            for acc in report.get("account_details") or []:
                if acc.get("name") != account:
                    continue
                for detail in acc.get("stream_detail") or []:
                    cluster = detail.get("cluster") or {}
                    placement = found.setdefault(detail["name"], StreamPlacement(
                        name=detail["name"], replicas=int((detail.get("config") or {}).get("num_replicas") or 1)))
                    placement.hosts.add(name)
                    if cluster.get("leader"):
                        placement.leader = str(cluster["leader"])
        return found

    def stream_leader(self, stream: str, *, account: str = "JETMAIL") -> str | None:
        """The node currently leading ``stream``, or None while there is none."""
        placement = self.streams(account=account).get(stream)
        return placement.leader if placement else None

    # ---- internals
    def server_env(self) -> dict[str, str]:
        """The password variables the configuration refers to, for the nodes' environment."""
        return {var: nats_string(self.passwords[user]) for user, var in PASSWORD_VARS.items()}

    def _spawn(self, name: str) -> None:
        node = self.nodes[name]
        env = {**os.environ, **self.server_env()}
        with node.log.open("ab") as out:
            node.proc = subprocess.Popen([nats_server_binary(), "-c", str(node.config)], cwd=node.config.parent,
                                         env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def _wait_ready(self, name: str, *, timeout: float) -> None:
        node = self.nodes[name]
        wait_until(http_ready(f"http://127.0.0.1:{node.monitor_port}/healthz?js-enabled-only=true"),
                   timeout=timeout, what=name, proc=node.proc, log=node.log)
        # /healthz with js-enabled-only answers before the cluster has a meta-leader; wait for that too, and stop
        # waiting as soon as another node has ended (no meta-leader would come)
        wait_until(lambda: self._others_running(name) and self._has_meta_leader(name), timeout=timeout,
                   what=f"{name} joining the cluster", proc=node.proc, log=node.log)

    def _others_running(self, name: str) -> bool:
        for other in self.nodes.values():
            if other.name != name and other.proc is not None and other.proc.poll() is not None:
                raise exited(other.name, other.proc, other.log)
        return True

    def _every_peer_current(self) -> bool:
        for name in self.nodes:
            try:
                meta = self.jsz(name).get("meta_cluster") or {}
            except OSError:
                continue
            if meta.get("leader") == name:
                peers = meta.get("replicas") or []
                return len(peers) == len(self.nodes) - 1 and all(p.get("current") and not p.get("offline")
                                                                 for p in peers)
        return False

    def _has_meta_leader(self, name: str) -> bool:
        try:
            return bool((self.jsz(name).get("meta_cluster") or {}).get("leader"))
        except OSError:
            return False


def start_worker(env: dict[str, str], *, log: Path, queues: tuple[str, ...] = ("email_transactional", "email_campaign"),
                 concurrency: int = 16, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """A real ``jetmail worker`` process with ``env`` (e.g. ``client_env("worker")`` plus the AWS settings),
    its output in ``log``; returns once its /healthz answers. Stop it with ``stack.stop_process(proc.pid)``."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jetmail.cli", "worker", *queues, "--concurrency",
                                 str(concurrency), "--health-port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=timeout, what="worker", proc=proc, log=log)
    return proc
