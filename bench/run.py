"""``make bench``: jetmail's figures on this machine, printed as one table and saved as JSON.

Starts a local stack of its own (nats-server, moto, an SMTP sink: Postfix's ``smtp-sink`` when it
is installed, else jetmail's own Python sink, and says which), then measures:

* raw loop ceiling: one template rendered + MIME built + sent over SMTP in one process, no queue,
  no database;
* campaign throughput: N recipients (default 20,000), 2 worker processes, from "send" to the last
  SMTP accept, and its ratio to 2x the raw loop;
* cost: DynamoDB requests (counted by the local moto server) and NATS messages (nats-server's
  monitoring) per 100 campaign recipients;
* worker peak RSS;
* transactional latency: API accept → SMTP accept, p50/p95/p99 (default 300 sends);
* cold start: import time of each Lambda handler module in a fresh interpreter (median of 5).

Not a test: nothing here passes or fails. ``python bench/run.py --help`` for sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://a.example.com/",
           "docs_url": "https://d.example.com/"}


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback URLs we started
        return json.loads(resp.read())


def settings_for(state: Any, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETMAIL_")}
    env.update(state.env())
    env.update({"JETMAIL_TABLE_NAME": "jetmail-bench", "PYTHONUNBUFFERED": "1", **extra})
    return env


def raw_loop(smtp_port: int, count: int) -> float:
    from jetmail.compose import Composer, Recipient
    from jetmail.config import Settings
    from jetmail.providers import OutboundMessage, SmtpProvider
    from jetmail.templating import EXAMPLE_TEMPLATES_DIR, TemplateVersion, load_template_dir

    settings = Settings(_env_file=None, table_name="unused", signing_secret="x" * 32,  # type: ignore[call-arg]
                        smtp_port=smtp_port, smtp_pool_size=4)
    content = next(c for c in load_template_dir(EXAMPLE_TEMPLATES_DIR) if c.name == "getting_started" and
                   c.locale == "en")
    version = TemplateVersion(**content.model_dump(), version=1)
    composer = Composer(settings)

    async def run() -> float:
        provider = SmtpProvider(settings)
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                to = Recipient(email=f"raw{i}@bench.example.com", name=f"User {i}")
                rendered = composer.render(version, CONTEXT, recipient=to, message_id=f"raw{i}")
                built = composer.build(rendered, message_id=f"raw{i}", recipient=to)
                await provider.send(OutboundMessage(mail_from="noreply@example.com", recipients=[to.email],
                                                    raw=built.data, message_id=f"raw{i}"))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - start
        await provider.close()
        return count / elapsed

    return asyncio.run(run())


def cold_starts(env: dict[str, str]) -> dict[str, float]:
    out = {}
    for function in ("api", "ses_events", "scheduler"):
        path = ROOT / "functions" / function / "app.py"
        code = ("import time, importlib.util as u; t=time.perf_counter(); "
                f"s=u.spec_from_file_location('h', {str(path)!r}); m=u.module_from_spec(s); s.loader.exec_module(m); "
                "print(time.perf_counter()-t)")
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout.strip()) for _ in range(5)]
        out[function] = statistics.median(runs) * 1000
    return out


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--raw", type=int, default=3_000)
    parser.add_argument("--latency-sends", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from jetmail.api.app import create_app
    from jetmail.bootstrap import bootstrap
    from jetmail.config import Settings
    from jetmail.devstack.mailbox import Mailbox
    from jetmail.devstack.stack import LocalStack, free_port, http_ready, stop_process, wait_until
    from jetmail.services import Services
    from jetmail.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir

    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
                               "at": datetime.now(UTC).isoformat()}
    root = Path(tempfile.mkdtemp(prefix="jetmail-bench-"))
    stack = LocalStack(root)
    state = stack.up(["nats", "moto", "smtp"])
    results["sink"] = "jetmail's Python SMTP sink (Postfix smtp-sink is not installed)"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        env = settings_for(state, {})
        os.environ.update({k: v for k, v in env.items() if k.startswith(("JETMAIL_", "AWS_"))})
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        list(bootstrap(settings, create_table=True))
        services = Services(settings)
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
            services.templates.save(content)
        mailbox = Mailbox(state.maildir)
        smtp_port = state.services["smtp"].port

        print("raw loop ...", flush=True)
        results["raw_loop_per_s"] = raw_loop(smtp_port, args.raw)

        print("cold starts ...", flush=True)
        results["cold_start_ms"] = cold_starts(env)

        print(f"importing {args.recipients} contacts ...", flush=True)
        lst = services.contacts.create_list("bench")
        rows = "".join(json.dumps({"email": f"c{i}@bench.example.com", "name": f"C {i}"}) + "\n"
                       for i in range(args.recipients)).encode()
        services.contacts.import_members([rows], list_id=lst.id, fmt="jsonl")

        for n in range(2):
            port = free_port()
            log = (root / f"worker{n}.log").open("wb")
            proc = subprocess.Popen([sys.executable, "-m", "jetmail.cli", "worker", "email_transactional",
                                     "email_campaign", "email_ab_test", "email_maintenance", "--concurrency", "16",
                                     "--health-port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
            workers.append(proc)
            wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="worker")

        from jetmail.campaigns.model import AudienceSource, CampaignCreate

        campaign = services.campaigns.create(CampaignCreate(name="bench", template="getting_started",
                                                            context=CONTEXT,
                                                            audience=[AudienceSource(list_id=lst.id)]))
        moto = state.services["moto"].url
        before_ops = fetch_json(f"{moto}/_jetmail/requests")
        before_ddb = sum(before_ops.values())
        nats_monitor = f"http://127.0.0.1:{state.services['nats'].monitor_port}"
        varz = fetch_json(f"{nats_monitor}/varz")
        already = mailbox.count()
        print("campaign ...", flush=True)
        started = time.time()
        services.campaigns.send(campaign.id)
        wait_until(lambda: mailbox.count() >= already + args.recipients, timeout=3600, what="campaign")
        last = max(e.received_at for e in mailbox.entries()[already:])
        results["campaign_per_s"] = args.recipients / (last - started)
        results["campaign_vs_2x_raw"] = results["campaign_per_s"] / (2 * results["raw_loop_per_s"])
        after_ops = fetch_json(f"{moto}/_jetmail/requests")
        after_ddb = sum(after_ops.values())
        results["dynamodb_requests_by_operation"] = {
            op: n - before_ops.get(op, 0) for op, n in after_ops.items() if n - before_ops.get(op, 0)}
        results["dynamodb_requests_per_100"] = (after_ddb - before_ddb) / args.recipients * 100
        varz_after = fetch_json(f"{nats_monitor}/varz")
        results["nats_messages_per_100"] = (varz_after["in_msgs"] - varz["in_msgs"]) / args.recipients * 100
        results["worker_peak_rss_mb"] = max(rss_peak_mb(p.pid) for p in workers)

        print("transactional latency ...", flush=True)
        _, token = services.api_keys.create("bench")
        client = TestClient(create_app(settings, services=services), headers={"Authorization": f"Bearer {token}"})
        latencies = []
        for i in range(args.latency_sends):
            to = f"t{i}-{int(started)}@bench.example.com"
            accepted = time.time()
            resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": {
                "reset_url": "https://a.example.com/r", "expires_in_minutes": 5}})
            resp.raise_for_status()
            wait_until(lambda to=to: mailbox.for_recipient(to), timeout=30, what="transactional mail")
            latencies.append((mailbox.for_recipient(to)[0].received_at - accepted) * 1000)
        q = statistics.quantiles(latencies, n=100)
        results["transactional_ms"] = {"p50": q[49], "p95": q[94], "p99": q[98]}
    finally:
        for proc in workers:
            stop_process(proc.pid)
        stack.down()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    rows = [
        ("raw loop ceiling (render+MIME+SMTP, 1 process)", f"{results['raw_loop_per_s']:,.0f} emails/s"),
        (f"campaign, {args.recipients:,} recipients, 2 workers", f"{results['campaign_per_s']:,.0f} emails/s"),
        ("campaign / (2 x raw loop)", f"{results['campaign_vs_2x_raw']:.2f}"),
        ("DynamoDB requests per 100 recipients", f"{results['dynamodb_requests_per_100']:.2f}"),
        ("NATS messages per 100 recipients", f"{results.get('nats_messages_per_100', float('nan')):.1f}"),
        ("worker peak RSS", f"{results['worker_peak_rss_mb']:.0f} MB"),
        ("transactional accept→SMTP p50/p95/p99",
         "{p50:.0f} / {p95:.0f} / {p99:.0f} ms".format(**results["transactional_ms"])),
        *((f"cold start: functions/{k}", f"{v:.0f} ms") for k, v in results["cold_start_ms"].items()),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  value\n{'-' * width}  -----")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"\nsink: {results['sink']}\nsaved: {args.out}")


if __name__ == "__main__":
    main()
