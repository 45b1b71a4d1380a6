"""A campaign on a 3-node JetStream cluster (infra/nats/ configs, R3 streams) survives losing a node."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.bootstrap import bootstrap
from jetmail.campaigns.signals import JOURNAL_STREAM
from jetmail.config import Settings
from jetmail.devstack.cluster import NatsCluster, start_worker
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import LocalStack, StackState, stop_process, wait_until
from jetmail.kv import KvUnavailable
from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
from jetmail.queue import QueueError
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import make_settings, stack_env

RECIPIENTS = 3000
CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@dataclass
class ClusterStack:
    cluster: NatsCluster
    settings: Settings  # connects as the NATS user "worker" (creates streams, as `jetmail init` does)
    api: Services  # connects as the NATS user "api", like the Lambda functions
    token: str
    env: dict[str, str]
    root: Path


@pytest.fixture(scope="module")
def clustered(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    root = tmp_path_factory.mktemp("cluster")
    aws = LocalStack(root / "aws", preferred_ports=False)
    cluster = NatsCluster(root / "nats").start()
    try:
        moto = aws.up(["moto"]).services["moto"].url
        common = {"aws_endpoint_url": moto, "table_name": "jetmail-cluster", "stream_replicas": 3,
                  "nats_url": cluster.url}
        worker_settings = make_settings(stack, **common, nats_user="worker",
                                        nats_password=cluster.passwords["worker"])
        list(bootstrap(worker_settings, create_table=True))
        api = Services(make_settings(stack, **common, nats_user="api", nats_password=cluster.passwords["api"]))
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
            api.templates.save(content)
        _, token = api.api_keys.create("cluster", scopes=["admin"])
        env = {**stack_env(stack), **cluster.client_env("worker"), "JETMAIL_AWS_ENDPOINT_URL": moto,
               "JETMAIL_TABLE_NAME": "jetmail-cluster", "JETMAIL_STREAM_REPLICAS": "3"}
        yield ClusterStack(cluster=cluster, settings=worker_settings, api=api, token=token, env=env, root=root)
        api.queue.close()
    finally:
        cluster.stop()
        aws.down()


def choose_victim(clustered: ClusterStack) -> tuple[str, dict[str, int]]:
    """The node leading the campaign journal stream (the records that say who was mailed), and the streams
    that have fewer replicas than the cluster has nodes."""
    streams = clustered.cluster.streams()
    unreplicated = {s.name: s.replicas for s in streams.values() if s.replicas < len(clustered.cluster.nodes)}
    leader = streams[JOURNAL_STREAM].leader
    assert leader is not None, streams
    return leader, unreplicated


def test_campaign_survives_a_killed_node_with_every_recipient_mailed_once(clustered: ClusterStack,
                                                                          mailbox: Mailbox, unique: str) -> None:
    # GIVEN a 3-node cluster with R3 streams, two workers given all three URLs, and a list of 3,000 contacts
    info = clustered.api.queue.run(lambda q: q.js.stream_info(clustered.settings.jobs_stream))
    assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
    domain = f"r{unique}.example.com"
    expected = {f"n{i}@{domain}" for i in range(RECIPIENTS)}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers.extend(start_worker(clustered.env, log=clustered.root / f"worker{n}.log") for n in range(2))
        with TestClient(create_app(clustered.api.settings, services=clustered.api),
                        headers={"Authorization": f"Bearer {clustered.token}"}) as client:
            list_id = client.post("/v1/lists", json={"name": f"cluster-{unique}"}).json()["id"]
            rows = sorted(expected)
            for offset in range(0, len(rows), 1000):
                body = "\n".join(json.dumps({"email": e}) for e in rows[offset:offset + 1000]).encode()
                resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body)
                assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
            created = client.post("/v1/campaigns", json={"name": "cluster", "template": "getting_started",
                                                         "context": CONTEXT, "audience": [{"list_id": list_id}]})
            assert created.status_code == 201, created.text
            campaign_id = created.json()["id"]

            def mailed() -> int:
                return sum(n for r, n in mailbox.by_recipient().items() if r.endswith(domain))

            # WHEN the campaign is sent and the node leading the journal stream is SIGKILLed mid-send
            assert client.post(f"/v1/campaigns/{campaign_id}/send").json()["state"] == "sending"
            wait_until(lambda: mailed() >= RECIPIENTS // 10, timeout=120, what="sending under way")
            victim, unreplicated = choose_victim(clustered)
            clustered.cluster.kill(victim)
            at_kill = mailed()

            # THEN the campaign completes on the two remaining nodes
            def sent() -> bool:
                try:
                    tick(clustered.api)
                except (QueueError, KvUnavailable):
                    return False  # a tick during the failover may time out; EventBridge runs the next one
                return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

            wait_until(sent, timeout=300, what="campaign sent after the node loss")
            # and every recipient was mailed exactly once, counted at the SMTP sink
            received = {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}
            lost = expected - set(received)
            duplicated = {r: n for r, n in received.items() if n > 1}
            print(f"\ncluster: killed {victim} after {at_kill} of {RECIPIENTS} mails; "
                  f"lost={len(lost)} duplicated={len(duplicated)} unexpected={len(set(received) - expected)}; "
                  f"unreplicated streams: {', '.join(sorted(unreplicated)) or 'none'}")
            assert not lost, sorted(lost)[:10]
            assert set(received) <= expected
            progress = client.get(f"/v1/campaigns/{campaign_id}").json()["progress"]
            assert progress["sent"] == RECIPIENTS and progress["failed"] == 0
            # and the workers rode through the loss without exiting
            assert all(proc.poll() is None for proc in workers)
            assert not duplicated, sorted(duplicated.items())[:10]
            assert not unreplicated, unreplicated
    finally:
        for proc in workers:
            stop_process(proc.pid)


def test_passwords_that_look_like_numbers_dates_or_sizes_still_work(tmp_path: Path) -> None:
    # GIVEN passwords nats-server would read as a date, a float, a size and a boolean if left unquoted
    cluster = NatsCluster(tmp_path / "nats")
    cluster.passwords = {"api": "12-yes", "worker": "7.5x", "admin": "64kb"}
    try:
        # WHEN the cluster starts with them
        cluster.start()
        # THEN each jetmail user connects with its password as written
        async def connect(user: str) -> bool:
            nc = await nats.connect(servers=cluster.url.split(","), user=user, password=cluster.passwords[user],
                                    allow_reconnect=False, connect_timeout=5)
            try:
                return nc.is_connected
            finally:
                await nc.close()

        assert asyncio.run(connect("api")) and asyncio.run(connect("worker"))
        # AND a wrong one is refused
        cluster.passwords["worker"] = "7.5y"
        with pytest.raises(nats.errors.Error):
            asyncio.run(connect("worker"))
    finally:
        cluster.stop()


def test_a_cluster_whose_port_was_taken_starts_again_on_new_ports(tmp_path: Path) -> None:
    # GIVEN a cluster whose second node's route port another process took after it was picked
    cluster = NatsCluster(tmp_path / "nats")
    taken = cluster.nodes["nats-2"].cluster_port
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        # WHEN it starts
        with cluster:
            # THEN it runs, every node on ports of its own, and the node that lost its port says so in its log
            assert all(node.alive for node in cluster.nodes.values())
            assert cluster.nodes["nats-2"].cluster_port != taken
            assert "address already in use" in cluster.nodes["nats-2"].log.read_text()
    finally:
        squatter.close()
