"""A private stack for one fault scenario, and the sink-side accounting every scenario prints.

The stack is ``stacktools.Isolated`` (its own nats-server and moto) pointed at an SMTP sink of its
own, started with the scenario's fault settings, so nothing injected here reaches another test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import LocalStack, StackError, StackState, stop_process, wait_until
from jetmail.scheduler import tick
from stacktools import Isolated

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


class FaultStack:
    """Isolated + a private sink (``sink_env``: JETMAIL_SINK_* settings) + any number of workers."""

    def __init__(self, session: StackState, root: Path, *, sink_env: dict[str, str] | None = None,
                 worker_env: dict[str, str] | None = None) -> None:
        self.sink_stack = LocalStack(root / "sink", preferred_ports=False)
        sink = self.sink_stack.up(["smtp"], extra_env=sink_env or {})
        combined = StackState(root=str(root / "sink"), services={**session.services, "smtp": sink.services["smtp"]},
                              signing_secret=session.signing_secret)
        try:
            self.iso = Isolated(combined, root / "iso")
        except BaseException:
            self.sink_stack.down()
            raise
        self.iso.env.update(worker_env or {})
        self.mailbox = Mailbox(sink.maildir)
        self.maildir = sink.maildir
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started = 0

    @property
    def services(self) -> Any:
        return self.iso.services

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.iso.start_worker()
        assert self.iso.worker is not None
        self.workers.append(self.iso.worker)
        self.started += 1
        # Isolated logs every worker to worker.log; the running worker keeps writing to the renamed file
        (self.iso.root / "worker.log").rename(self.iso.root / f"worker{self.started}.log")
        return self.iso.worker

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no shutdown hook runs, in-flight jobs are redelivered after ack_wait."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.workers.remove(proc)

    def close(self) -> None:
        for proc in self.workers:
            stop_process(proc.pid)
        self.iso.worker = None
        self.iso.close()
        self.sink_stack.down()

    def audience(self, domain: str, count: int, *, prefix: str = "u", workers: int = 2) -> tuple[str, list[str]]:
        """A list of ``count`` subscribed contacts ``<prefix><i>@<domain>`` and ``workers`` running workers;
        returns (list id, addresses)."""
        emails = [f"{prefix}{i}@{domain}" for i in range(count)]
        lst = self.services.contacts.create_list(f"faults-{domain}")
        rows = "".join(json.dumps({"email": e, "name": f"User {i}"}) + "\n" for i, e in enumerate(emails)).encode()
        report = self.services.contacts.import_members([rows], list_id=lst.id, fmt="jsonl")
        assert report.failed == 0, report
        for _ in range(workers):
            self.start_worker()
        return lst.id, emails

    def send_campaign(self, list_id: str, name: str) -> str:
        from jetmail.campaigns.model import AudienceSource, CampaignCreate

        campaign = self.services.campaigns.create(CampaignCreate(
            name=name, template="getting_started", context=CONTEXT, audience=[AudienceSource(list_id=list_id)]))
        self.services.campaigns.send(campaign.id)
        return str(campaign.id)

    def finish(self, campaign_id: str, *, timeout: float) -> dict[str, Any]:
        """Wait until the campaign is ``sent``; returns its public view (progress counters)."""
        def done() -> bool:
            tick(self.services)
            return bool(self.services.campaigns.get(campaign_id).state == "sent")

        try:
            wait_until(done, timeout=timeout, what=f"campaign {campaign_id} sent")
        except StackError:
            item = self.services.campaign_store.get(campaign_id)
            state = {k: item.get(k) for k in ("state", "total", "sent", "failed", "skipped", "batches_done",
                                              "batches_planned", "runs_planned")}
            raise AssertionError(f"campaign not finished: {state}; worker logs in {self.iso.root}") from None
        return dict(self.services.campaigns.get(campaign_id).model_dump(mode="json"))

    def injected(self) -> list[dict[str, Any]]:
        """Every fault the sink injected (``faults.jsonl``)."""
        path = self.maildir / "faults.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Tally:
    """What arrived at the sink for the expected recipients, counted by recipient."""

    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)  # recipient -> extra copies
    resent_same_message_id: int = 0  # extra copies carrying the Message-ID of an earlier copy
    first_copy_at: dict[str, float] = field(default_factory=dict)  # duplicated recipient -> first arrival
    unexpected: list[str] = field(default_factory=list)

    @property
    def extra_copies(self) -> int:
        return sum(self.duplicated.values())


def tally(mailbox: Mailbox, expected: Iterable[str], *, domain: str, never: Iterable[str] = ()) -> Tally:
    expected_set = {e.lower() for e in expected}
    by_rcpt: dict[str, list[str]] = {}
    arrived: dict[str, float] = {}
    for entry in mailbox.entries():
        arrived[entry.id] = entry.received_at
        for rcpt in entry.rcpt_tos:
            if rcpt.lower().endswith(domain):
                by_rcpt.setdefault(rcpt.lower(), []).append(entry.id)
    out = Tally(lost=sorted(expected_set - set(by_rcpt)),
                unexpected=sorted((set(by_rcpt) - expected_set) | (set(by_rcpt) & {n.lower() for n in never})))
    for rcpt, ids in by_rcpt.items():
        if len(ids) > 1:
            out.duplicated[rcpt] = len(ids) - 1
            out.first_copy_at[rcpt] = min(arrived[i] for i in ids)
            message_ids = Counter(str(mailbox.message(i)["Message-ID"]) for i in ids)
            out.resent_same_message_id += sum(n - 1 for n in message_ids.values())
    return out


def all_mailed(mailbox: Mailbox, expected: Iterable[str], *, domain: str, timeout: float) -> bool:
    """Wait until every expected recipient has mail; False on timeout (the tally then names who is missing)."""
    wanted = {e.lower() for e in expected}

    def arrived() -> bool:
        got = {r.lower() for r in mailbox.by_recipient() if r.lower().endswith(domain)}
        return wanted <= got

    try:
        wait_until(arrived, timeout=timeout, what="every expected recipient mailed")
    except StackError:
        return False
    return True


def quiet(mailbox: Mailbox, *, seconds: float = 3.0, timeout: float = 120.0) -> int:
    """Wait until nothing new arrives for ``seconds`` (late duplicates would show up meanwhile)."""
    deadline = time.monotonic() + timeout
    last, since = mailbox.count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = mailbox.count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
    raise AssertionError("the sink kept receiving mail")


def result_line(name: str, result: Tally, *, permanent_recorded: int, permanent_total: int,
                **extra: object) -> str:
    more = "".join(f" {k}={v}" for k, v in extra.items())
    line = (f"[{name}] lost={len(result.lost)} duplicated={result.extra_copies} "
            f"permanent_failures_recorded={permanent_recorded}/{permanent_total}{more}")
    print(line, flush=True)
    return line
