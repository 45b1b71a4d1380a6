"""The send-rate limit through the whole pipeline: four `jetmail worker` processes sending one campaign."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, free_port, http_ready, stop_process, wait_until
from stacktools import Isolated

LIMIT = 50
AUDIENCE = 1000


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("ratelimit-pipeline"))
    yield own
    own.close()


@pytest.fixture(scope="module")
def workers(isolated: Isolated) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Four real workers sharing a 50/s limit with no share held back for transactional mail."""
    env = {**isolated.env, "JETMAIL_RATE_PER_SECOND": str(LIMIT), "JETMAIL_RATE_PER_DAY": "0",
           "JETMAIL_RATE_DOMAIN_LIMITS": "{}", "JETMAIL_RATE_TRANSACTIONAL_SHARE": "0"}
    procs = []
    try:
        for n in range(4):
            port = free_port()
            log = isolated.root / f"worker{n}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "jetmail.cli", "worker", "email_transactional", "email_campaign",
                     "--concurrency", "16", "--health-port", str(port)],
                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what=f"worker {n}", proc=proc,
                       log=log)
        yield procs
    finally:
        for proc in procs:
            stop_process(proc.pid)


# Wall-clock acceptance on a 2-core machine: a scheduling hiccup of the host can push one send across a
# second boundary, so a failing run is tried once more.
@pytest.mark.flaky(reruns=1)
def test_a_campaign_through_four_workers_never_exceeds_the_limit_in_any_second(
        isolated: Isolated, workers: list[subprocess.Popen[bytes]], mailbox: Mailbox, unique: str) -> None:
    # GIVEN 1,000 subscribed contacts and four workers sharing a 50/s limit
    domain = f"pipe-{unique}.example"
    with TestClient(create_app(isolated.settings, services=isolated.services),
                    headers={"Authorization": f"Bearer {isolated.token}"}) as client:
        list_id = client.post("/v1/lists", json={"name": f"pipeline-{unique}"}).json()["id"]
        rows = "\n".join(json.dumps({"email": f"r{i}@{domain}"}) for i in range(AUDIENCE)).encode()
        imported = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=rows).json()
        assert imported["failed"] == 0, imported
        campaign = client.post("/v1/campaigns", json={
            "name": "rate", "template": "welcome", "audience": [{"list_id": list_id}],
            "context": {"login_url": "https://app.example.com/"}})
        assert campaign.status_code == 201, campaign.text
        # WHEN the campaign is sent
        sent = client.post(f"/v1/campaigns/{campaign.json()['id']}/send")
        assert sent.status_code == 200, sent.text

    def arrivals() -> list[float]:
        return [e.received_at for e in mailbox.entries() if any(r.endswith(domain) for r in e.rcpt_tos)]

    wait_until(lambda: len(arrivals()) >= AUDIENCE, timeout=90, what="the campaign at the sink")
    # THEN every contact got exactly one message,
    received = {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}
    assert len(received) == AUDIENCE and max(received.values()) == 1
    # no second (by arrival time at the sink) holds more than 50,
    times = arrivals()
    per_second = Counter(math.floor(t) for t in times)
    assert max(per_second.values()) <= LIMIT, sorted(per_second.items())
    # AND the limit was used rather than undershot: 1,000 at 50/s is 20 windows, about 19-20 s
    span = max(times) - min(times)
    assert 18.0 <= span <= 30.0, (span, sorted(per_second.items()))
    assert all(proc.poll() is None for proc in workers)
