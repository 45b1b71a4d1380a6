"""``make bench``: jetmail's figures on this machine, printed as one table and saved as JSON.

Starts a local stack of its own (nats-server, moto, an SMTP sink: Postfix's ``smtp-sink``, installed
with apt-get when missing and possible, else jetmail's own Python sink, and says which), then measures:

* raw loop ceiling: one template rendered + MIME built + sent over SMTP in one process, no queue,
  no database (to the chosen sink, and to the Python sink for reference);
* campaign throughput: N recipients (default 20,000), 2 worker processes, from "send" to the last
  message at smtp-sink (its ``-c`` counters; with the Python sink, until the campaign's counters show
  every recipient done), its ratio to 2x the raw loop, when the first message arrived, and the
  workers' CPU time per email;
* cost: DynamoDB requests (counted by the local moto server, less the bench's own progress polls)
  and NATS messages (nats-server's monitoring) per 100 campaign recipients;
* worker peak RSS after the N-recipient campaign and after the busy campaign;
* transactional latency: API accept → SMTP accept (the message's ``created_at`` → ``sent_at``,
  both written by jetmail), p50/p95/p99 over 1,000 sends paced at 20/s, idle and while a
  20,000-recipient campaign runs, and how long each ``POST /v1/messages`` took; that campaign's own
  rate, from "send" until its counters show every recipient done, and which DynamoDB operations held
  the emulator (which answers one request at a time) how long meanwhile;
* optionally (``--large-recipients 200000``) a large campaign imported and sent end to end, its rate
  against the N-recipient one;
* planner memory: peak RSS of the campaign plan path (planner + batch payloads, chunked as the plan
  job publishes them) over a synthetic in-memory audience of 20,000 and 200,000, in a fresh
  interpreter each (no DynamoDB, no sending: what the audience size adds to a worker);
* cold start: import time of each Lambda handler module in a fresh interpreter (median of 5);
* SMTP submission: messages/s ``jetmail smtp-server`` accepts from 4 concurrent STARTTLS+AUTH clients.

Not a test: nothing here passes or fails. ``python bench/run.py --help`` for sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_imports
from postfix_sink import SinkClock, find_smtp_sink, install_smtp_sink, start_smtp_sink

ROOT = Path(__file__).resolve().parents[1]
# the shipped template the campaigns send, with a context of its own shape: two tips, each with a link, and the blog
TEMPLATE = "tips_and_tricks"
CONTEXT = {"tips": [{"title": "Use a preheader", "body": "The line after the subject sells the open.",
                     "url": "https://example.com/blog/preheaders"},
                    {"title": "Send at the recipient's morning", "body": "Schedules follow each recipient's timezone.",
                     "url": "https://example.com/blog/timezones"}],
           "blog_url": "https://example.com/blog"}


def fetch_json(url: str, *, post: bool = False) -> Any:
    request = urllib.request.Request(url, data=b"" if post else None)  # noqa: S310 - loopback URLs we started
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback URLs we started
        return json.loads(resp.read())


def settings_for(state: Any, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETMAIL_")}
    env.update(state.env())
    # the bench is the API's only client: its per-key request limit would measure itself
    env.update({"JETMAIL_TABLE_NAME": "jetmail-bench", "PYTHONUNBUFFERED": "1", "JETMAIL_API_RATE_PER_MINUTE": "0",
                **extra})
    return env


def raw_loop(smtp_port: int, count: int) -> float:
    from jetmail.config import Settings
    from jetmail.messaging.compose import Composer, Recipient
    from jetmail.messaging.providers import OutboundMessage, SmtpProvider
    from jetmail.messaging.templating import (
        EXAMPLE_TEMPLATES_DIR,
        InMemoryTemplates,
        Renderer,
        TemplateVersion,
        load_template_dir,
    )

    settings = Settings(_env_file=None, table_name="unused", signing_secret="x" * 32,  # type: ignore[call-arg]
                        smtp_port=smtp_port, smtp_pool_size=4)
    examples = load_template_dir(EXAMPLE_TEMPLATES_DIR)
    content = next(c for c in examples if c.name == TEMPLATE and c.locale == "en")
    version = TemplateVersion(**content.model_dump(), version=1)
    renderer = Renderer(limits=settings.render_limits, layouts=InMemoryTemplates(examples).layout)
    composer = Composer(settings, renderer=renderer)

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


def emulator_time(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per DynamoDB operation, how long it held the (one-request-at-a-time) emulator between two readings of
    ``/_jetmail/timings``: requests, total ms, and the slowest one since the first reading (taken with
    ``post=True``, which starts the slowest afresh) with what it was."""
    out = {}
    for op, now in after.items():
        was = before.get(op, {"count": 0, "total_ms": 0.0})
        if now["count"] > was["count"]:
            out[op] = {"count": now["count"] - was["count"], "total_ms": round(now["total_ms"] - was["total_ms"], 1),
                       "max_ms": now["max_ms"], "slowest": now.get("slowest", "")}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["total_ms"]))


def cold_starts() -> dict[str, float]:
    """Median wall time of loading each handler module in 5 fresh processes (bench/bench_imports.py)."""
    return {handler: bench_imports.measure(handler, 5, bench_imports.lambda_env())["wall_ms"]
            for handler in bench_imports.HANDLERS}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "python": sys.version.split()[0], "load_average_at_start": os.getloadavg()}


@dataclass
class SyntheticMember:
    email: str
    name: str | None
    language: str | None = None
    timezone: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class SyntheticAudience:
    """``size`` list members generated on the fly: the planner's own memory, without DynamoDB's."""

    def __init__(self, size: int) -> None:
        self.size = size

    def iter_list_members(self, list_id: str, *, status: str = "subscribed", page_size: int | None = None,
                          first_page: int | None = None, within: Any = None) -> Iterator[SyntheticMember]:
        for i in range(self.size):
            yield SyntheticMember(email=f"c{i}@bench.example.com", name=f"C {i}", attributes={"plan": "pro"})

    def iter_members(self, segment_id: str, *, page_size: int | None = None,
                     first_page: int | None = None, within: Any = None) -> Iterator[SyntheticMember]:
        return iter(())

    def suppressed_among(self, emails: list[str]) -> dict[str, str]:
        return {}


def planner_child(size: int) -> None:
    """Run in a fresh interpreter: plan ``size`` recipients as the plan job does; print peak RSS before/after."""
    from jetmail.campaigns.jobs import PUBLISH_CHUNK
    from jetmail.campaigns.model import AudienceSource, CampaignCreate
    from jetmail.campaigns.planner import Planner

    audience = SyntheticAudience(size)
    campaign = CampaignCreate(name="rss", template=TEMPLATE,
                              audience=[AudienceSource(list_id="lst_synthetic")])
    before = rss_peak_mb(os.getpid())
    batches = Planner(contacts=audience, segments=audience, suppressions=audience).batches(campaign, run="main")
    planned = 0
    while chunk := list(itertools.islice(batches, PUBLISH_CHUNK)):
        payloads = [json.dumps({"campaign_id": "c", "run": "main", "batch": b.number, "variant": b.variant,
                                "recipients": [r.model_dump() for r in b.recipients]}).encode() for b in chunk]
        planned += sum(len(b.recipients) for b in chunk)
        del payloads
    print(json.dumps({"before_mb": before, "peak_mb": rss_peak_mb(os.getpid()), "planned": planned}))


def planner_rss(size: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--planner-child", str(size)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "shared")})
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def paced_sends(client: Any, *, count: int, rate: float, tag: str, errors: list[str],
                posts_ms: list[float] | None = None) -> list[tuple[str, float]]:
    """POST ``count`` transactional messages at ``rate`` per second; returns (message id, wall time posted).
    A refused request is noted in ``errors`` (status and body) and the run goes on; ``posts_ms`` gets how
    long each POST took."""
    sent: list[tuple[str, float]] = []
    start = time.monotonic()
    for i in range(count):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the load generator, not waiting on a result
        posted = time.perf_counter()
        resp = client.post("/v1/messages", json={"template": "password_reset", "to": f"{tag}{i}@bench.example.com",
                                                 "context": {"reset_url": "https://a.example.com/r",
                                                             "expires_in_minutes": 5}})
        if posts_ms is not None:
            posts_ms.append((time.perf_counter() - posted) * 1000)
        if resp.status_code != 202:
            errors.append(f"{resp.status_code} {resp.text[:200]}")
            continue
        sent.append((resp.json()["id"], time.time()))
    return sent


def latencies(services: Any, sent: list[tuple[str, float]], *, until: float | None = None) -> dict[str, float]:
    """created_at → sent_at per message (waits for each to be sent); only those posted before ``until``. Also
    the part of it until a worker claimed the message (``claim_p50``...): the wait for a worker, apart from
    the send itself."""
    from jetmail.devstack.stack import wait_until

    out = []
    claimed = []
    for message_id, posted in sent:
        if until is not None and posted > until:
            continue
        view: dict[str, Any] = {}

        def done(message_id: str = message_id, view: dict[str, Any] = view) -> bool:
            view.update(services.messages.get(message_id).model_dump(mode="json"))
            return view["status"] in ("sent", "failed")

        wait_until(done, timeout=120, what=f"message {message_id}")
        if view["status"] == "sent":
            created = datetime.fromisoformat(view["created_at"])
            out.append((datetime.fromisoformat(view["sent_at"]) - created).total_seconds() * 1000)
            claim = next(h["at"] for h in view["history"] if h["status"] == "sending")
            claimed.append((datetime.fromisoformat(claim) - created).total_seconds() * 1000)
    q = statistics.quantiles(out, n=100)
    c = statistics.quantiles(claimed, n=100)
    return {"p50": q[49], "p95": q[94], "p99": q[98], "count": len(out),
            "claim_p50": c[49], "claim_p95": c[94], "claim_p99": c[98]}


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100) if len(values) > 1 else [0.0] * 99
    return {"p50": q[49], "p95": q[94], "p99": q[98], "count": len(values)}


@contextmanager
def dynamodb_probe(services: Any, every: float = 0.1) -> Iterator[dict[str, float]]:
    """One GetItem every ``every`` s while the block runs; yields its p50/p95/p99 in ms once the block ends.
    What one DynamoDB call costs meanwhile, on the local emulator that applies requests one at a time."""
    stop = threading.Event()
    timings: list[float] = []

    def run() -> None:
        while not stop.wait(every):
            started = time.perf_counter()
            services.table.get("BENCH#probe", "PROBE")
            timings.append((time.perf_counter() - started) * 1000)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    figures: dict[str, float] = {}
    try:
        yield figures
    finally:
        stop.set()
        thread.join()
        figures.update(percentiles(timings))


def rss_peak_mb(pid: int, *, children: bool = False) -> float:
    """A process's peak RSS, or with ``children`` the largest of the processes it started (a worker's
    transactional child: `jetmail worker --transactional-process`), 0 when it started none."""
    from jetmail.devstack.stack import child_pids

    peak = 0.0
    for one in child_pids(pid) if children else [pid]:
        try:
            lines = Path(f"/proc/{one}/status").read_text().splitlines()
        except OSError:  # it ended meanwhile
            continue
        peak = max([peak, *(int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:"))])
    return peak


def import_list(services: Any, name: str, size: int, prefix: str) -> tuple[str, float]:
    lst = services.contacts.create_list(name)
    rows = "".join(json.dumps({"email": f"{prefix}{i}@bench.example.com", "name": f"C {i}"}) + "\n"
                   for i in range(size)).encode()
    started = time.perf_counter()
    services.contacts.import_members([rows], list_id=lst.id, fmt="jsonl")
    return lst.id, size / (time.perf_counter() - started)


@dataclass
class CampaignRun:
    campaign_id: str
    started: float  # when ``send`` was called
    finished: float  # when the campaign's counters showed every recipient done
    first_at: float | None = None  # when its first / last message reached smtp-sink (None: no clock)
    last_at: float | None = None
    worker_cpu_s: float = 0.0

    @property
    def end(self) -> float:
        return self.last_at or self.finished


def run_campaign(services: Any, list_id: str, size: int, *, clock: SinkClock | None = None,
                 workers: list[subprocess.Popen[bytes]] = ()) -> CampaignRun:  # type: ignore[assignment]
    """Send a campaign of ``size`` to the list and time it from ``send`` to the last message at the sink."""
    from jetmail.campaigns.model import AudienceSource, CampaignCreate

    campaign = services.campaigns.create(CampaignCreate(name=f"bench-{size}", template=TEMPLATE,
                                                        context=CONTEXT, audience=[AudienceSource(list_id=list_id)]))
    base = clock.count if clock else 0
    cpu = sum(cpu_seconds(p.pid) for p in workers)
    started = time.time()
    services.campaigns.send(campaign.id)
    run = CampaignRun(campaign.id, started, wait_done(services, campaign.id, size))
    run.worker_cpu_s = sum(cpu_seconds(p.pid) for p in workers) - cpu
    if clock is not None:
        sent = services.campaigns.get(campaign.id).progress.sent
        run.first_at, run.last_at = clock.at(base + 1), clock.at(base + sent)
    return run


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and the processes it started (a worker's transactional
    child process: `jetmail worker --transactional-process`)."""
    from jetmail.devstack.stack import child_pids

    total = 0.0
    for one in (pid, *child_pids(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # it ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_requests(services: Any) -> int:
    """DynamoDB requests the bench process itself made (polling progress): not the campaign's cost."""
    return int(services.table.requests + services.stats_table.requests)


def wait_done(services: Any, campaign_id: str, size: int) -> float:
    from jetmail.devstack.stack import wait_until

    def done() -> bool:
        p = services.campaigns.get(campaign_id).progress
        return bool(p.sent + p.failed + p.skipped >= size)

    wait_until(done, timeout=7200, what=f"campaign of {size}")
    return time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--raw", type=int, default=3_000, help="messages of the raw loop (0: skip it)")
    parser.add_argument("--latency-sends", type=int, default=1_000,
                        help="transactional sends timed idle and during a busy campaign (0: skip both)")
    parser.add_argument("--latency-rate", type=float, default=20.0, help="transactional sends per second")
    parser.add_argument("--busy-recipients", type=int, default=20_000,
                        help="campaign running while latency is measured again (0: skip)")
    parser.add_argument("--large-recipients", type=int, default=0,
                        help="a further campaign of this size (e.g. 200000), imported and sent end to end (0: skip)")
    parser.add_argument("--submission-messages", type=int, default=2_000,
                        help="messages sent through `jetmail smtp-server` by 4 concurrent clients (0: skip)")
    parser.add_argument("--planner-audiences", default="20000,200000")
    parser.add_argument("--sink", choices=("auto", "postfix", "python"), default="auto")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install postfix")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the worker processes only, e.g. JETMAIL_CAMPAIGN_SENDS_PER_WORKER=64")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--planner-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    worker_env = dict(item.partition("=")[::2] for item in args.worker_env)
    if not all(name.startswith("JETMAIL_") for name in worker_env):
        parser.error("--worker-env takes JETMAIL_NAME=VALUE")
    if args.planner_child is not None:
        planner_child(args.planner_child)
        return

    # the in-process client times the API's own work; Starlette's notice about its httpx transport is not a figure
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

    from jetmail.api.app import create_app
    from jetmail.bootstrap import bootstrap
    from jetmail.config import Settings
    from jetmail.devstack.stack import LocalStack, free_port, http_ready, stop_process, wait_until
    from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
    from jetmail.services import Services

    results: dict[str, Any] = {"machine": machine(), "at": datetime.now(UTC).isoformat(), "args": {
        k: v for k, v in vars(args).items() if k not in ("out", "planner_child")}}
    root = Path(tempfile.mkdtemp(prefix="jetmail-bench-"))
    stack = LocalStack(root, preferred_ports=False)
    state = stack.up(["nats", "moto", "smtp"])
    workers: list[subprocess.Popen[bytes]] = []
    postfix: subprocess.Popen[bytes] | None = None
    clock: SinkClock | None = None
    services: Services | None = None
    try:
        python_sink_port = state.services["smtp"].port
        binary = find_smtp_sink() if args.sink != "python" else None
        how = "found"
        if binary is None and args.sink != "python" and not args.no_install:
            print("installing postfix for smtp-sink ...", flush=True)
            how = install_smtp_sink()
            binary = find_smtp_sink()
        if binary is not None:
            postfix, smtp_port = start_smtp_sink(binary, counters=True)
            clock = SinkClock(postfix)
            results["sink"] = f"Postfix smtp-sink ({binary}, {how})"
        elif args.sink == "postfix":
            raise SystemExit(f"Postfix smtp-sink unavailable: {how}")
        else:
            smtp_port = python_sink_port
            results["sink"] = ("jetmail's Python SMTP sink" +
                               ("" if args.sink == "python" else f" (Postfix smtp-sink {how})"))
        print(f"sink: {results['sink']}", flush=True)

        env = settings_for(state, {"JETMAIL_SMTP_PORT": str(smtp_port)})
        os.environ.update({k: v for k, v in env.items() if k.startswith(("JETMAIL_", "AWS_"))})
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        list(bootstrap(settings, create_table=True))
        services = Services(settings)
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
            services.templates.save(content)

        if args.raw > 0:
            print("raw loop ...", flush=True)
            results["raw_loop_per_s"] = raw_loop(smtp_port, args.raw)
            if smtp_port != python_sink_port:
                results["raw_loop_python_sink_per_s"] = raw_loop(python_sink_port, args.raw)

        print("cold starts ...", flush=True)
        results["cold_start_ms"] = cold_starts()

        print(f"importing {args.recipients:,} contacts ...", flush=True)
        list_id, results["import_contacts_per_s"] = import_list(services, "bench", args.recipients, "c")

        for n in range(2):
            port = free_port()
            log = (root / f"worker{n}.log").open("wb")
            proc = subprocess.Popen([sys.executable, "-m", "jetmail.cli", "worker", "email_transactional",
                                     "email_campaign", "email_ab_test", "email_maintenance",
                                     "--health-port", str(port)], env={**env, **worker_env}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            workers.append(proc)
            wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="worker")

        moto = state.services["moto"].url
        before_ops = fetch_json(f"{moto}/_jetmail/requests")
        before_own = own_requests(services)
        nats_monitor = f"http://127.0.0.1:{state.services['nats'].monitor_port}"
        varz = fetch_json(f"{nats_monitor}/varz")
        print(f"campaign of {args.recipients:,} ...", flush=True)
        run = run_campaign(services, list_id, args.recipients, clock=clock, workers=workers)
        results["campaign_per_s"] = args.recipients / (run.end - run.started)
        results["campaign_counted_per_s"] = args.recipients / (run.finished - run.started)
        if run.first_at is not None:
            results["campaign_first_message_s"] = run.first_at - run.started
        results["worker_cpu_ms_per_email"] = run.worker_cpu_s * 1000 / args.recipients
        if "raw_loop_per_s" in results:
            results["campaign_vs_2x_raw"] = results["campaign_per_s"] / (2 * results["raw_loop_per_s"])
        after_ops = fetch_json(f"{moto}/_jetmail/requests")
        own = own_requests(services) - before_own
        results["dynamodb_requests_by_operation"] = {
            op: n - before_ops.get(op, 0) for op, n in after_ops.items() if n - before_ops.get(op, 0)}
        results["dynamodb_requests_bench_own"] = own
        results["dynamodb_requests_per_100"] = (sum(after_ops.values()) - sum(before_ops.values()) - own) \
            / args.recipients * 100
        varz_after = fetch_json(f"{nats_monitor}/varz")
        results["nats_messages_per_100"] = (varz_after["in_msgs"] - varz["in_msgs"]) / args.recipients * 100
        results["worker_peak_rss_mb"] = max(rss_peak_mb(p.pid) for p in workers)

        _, token = services.api_keys.create("bench")
        # a 500 is counted as a refused request, not raised: the latency run goes on
        client = TestClient(create_app(settings, services=services), headers={"Authorization": f"Bearer {token}"},
                            raise_server_exceptions=False)
        if not args.latency_sends:
            print("transactional latency: skipped (--latency-sends 0)", flush=True)
        else:
            print(f"transactional latency, idle ({args.latency_sends} sends) ...", flush=True)
            results["transactional_api_errors"] = errors = []
            idle_posts: list[float] = []
            with dynamodb_probe(services) as results["dynamodb_get_idle_ms"]:
                sent = paced_sends(client, count=args.latency_sends, rate=args.latency_rate, tag="idle", errors=errors,
                                   posts_ms=idle_posts)
            results["post_idle_ms"] = percentiles(idle_posts)
            results["transactional_ms"] = latencies(services, sent)

            if args.busy_recipients:
                print(f"importing {args.busy_recipients:,} contacts ...", flush=True)
                busy_list, _ = import_list(services, "busy", args.busy_recipients, "b")
                from jetmail.campaigns.model import AudienceSource, CampaignCreate

                busy = services.campaigns.create(CampaignCreate(
                    name="busy", template=TEMPLATE, context=CONTEXT,
                    audience=[AudienceSource(list_id=busy_list)]))
                print(f"transactional latency during a campaign of {args.busy_recipients:,} ...", flush=True)
                busy_posts: list[float] = []
                busy_done: list[float] = []
                held_before = fetch_json(f"{moto}/_jetmail/timings", post=True)  # the slowest of this phase
                busy_started = time.time()
                services.campaigns.send(busy.id)
                # the campaign's end is watched from its start: it may finish long before the paced sends do
                watcher = threading.Thread(target=lambda: busy_done.append(wait_done(services, busy.id,
                                                                                      args.busy_recipients)))
                watcher.start()
                with dynamodb_probe(services) as results["dynamodb_get_busy_ms"]:
                    sent = paced_sends(client, count=args.latency_sends, rate=args.latency_rate, tag="busy",
                                       errors=errors, posts_ms=busy_posts)
                watcher.join()
                busy_finished = busy_done[0]
                results["busy_campaign_per_s"] = args.busy_recipients / (busy_finished - busy_started)
                results["transactional_during_campaign_ms"] = latencies(services, sent, until=busy_finished)
                results["worker_peak_rss_busy_mb"] = max(rss_peak_mb(p.pid) for p in workers)
                results["worker_child_peak_rss_mb"] = max(rss_peak_mb(p.pid, children=True) for p in workers)
                results["post_during_campaign_ms"] = percentiles(busy_posts)
                results["emulator_busy_by_operation"] = emulator_time(held_before,
                                                                      fetch_json(f"{moto}/_jetmail/timings"))

        if args.large_recipients:
            print(f"importing {args.large_recipients:,} contacts ...", flush=True)
            large_list, results["large_import_contacts_per_s"] = import_list(
                services, "large", args.large_recipients, "l")
            print(f"campaign of {args.large_recipients:,} ...", flush=True)
            large = run_campaign(services, large_list, args.large_recipients, clock=clock, workers=workers)
            results["large_campaign_per_s"] = args.large_recipients / (large.end - large.started)
            results["large_worker_cpu_ms_per_email"] = large.worker_cpu_s * 1000 / args.large_recipients
            results["worker_peak_rss_large_mb"] = max(rss_peak_mb(p.pid) for p in workers)

        if args.submission_messages:
            from bench_submission import submission_throughput

            print(f"SMTP submission, {args.submission_messages:,} messages from 4 clients ...", flush=True)
            _, sub_token = services.api_keys.create("bench-smtp", scopes=["send"])
            results["submission"] = submission_throughput(env, sub_token, root, messages=args.submission_messages)
    finally:
        for proc in workers:
            stop_process(proc.pid)
        if services is not None:
            services.queue.close()
        if postfix is not None:
            stop_process(postfix.pid)
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # what was measured so far, if a step failed

    print("planner memory ...", flush=True)
    results["planner_rss_mb"] = {size: planner_rss(int(size)) for size in args.planner_audiences.split(",")
                                if size.strip() and int(size) > 0}

    args.out.write_text(json.dumps(results, indent=2))
    probe = "{p50:.0f} / {p95:.0f} / {p99:.0f} ms"
    pct = "{p50:.0f} / {p95:.0f} / {p99:.0f} ms ({count} sends; claimed by a worker after {claim_p50:.0f} / " \
          "{claim_p95:.0f} / {claim_p99:.0f})"
    rows = [
        *((("raw loop ceiling (render+MIME+SMTP, 1 process)", f"{results['raw_loop_per_s']:,.0f} emails/s"),)
          if "raw_loop_per_s" in results else ()),
        *((("raw loop to the Python sink", f"{results['raw_loop_python_sink_per_s']:,.0f} emails/s"),)
          if "raw_loop_python_sink_per_s" in results else ()),
        ("contact import", f"{results['import_contacts_per_s']:,.0f} contacts/s"),
        (f"campaign, {args.recipients:,} recipients, 2 workers, send → last at sink",
         f"{results['campaign_per_s']:,.0f} emails/s"),
        *(((f"campaign, {args.recipients:,}: send → first message at sink",
            f"{results['campaign_first_message_s']:.2f} s"),) if "campaign_first_message_s" in results else ()),
        ("worker CPU per campaign email (both workers)", f"{results['worker_cpu_ms_per_email']:.2f} ms"),
        *((("campaign / (2 x raw loop)", f"{results['campaign_vs_2x_raw']:.2f}"),)
          if "campaign_vs_2x_raw" in results else ()),
        ("DynamoDB requests per 100 recipients", f"{results['dynamodb_requests_per_100']:.2f}"),
        ("NATS messages per 100 recipients", f"{results['nats_messages_per_100']:.1f}"),
        (f"worker peak RSS after {args.recipients:,}", f"{results['worker_peak_rss_mb']:.0f} MB"),
    ]
    if "transactional_ms" in results:
        rows += [
            ("transactional accept→SMTP p50/p95/p99, idle", pct.format(**results["transactional_ms"])),
            ("one emulated DynamoDB GetItem p50/p95/p99, idle", probe.format(**results["dynamodb_get_idle_ms"])),
            ("POST /v1/messages p50/p95/p99, idle", probe.format(**results["post_idle_ms"])),
        ]
    if "transactional_during_campaign_ms" in results:
        rows += [
            (f"campaign, {args.busy_recipients:,} recipients (with latency probe)",
             f"{results['busy_campaign_per_s']:,.0f} emails/s"),
            (f"transactional p50/p95/p99 during {args.busy_recipients:,}",
             pct.format(**results["transactional_during_campaign_ms"])),
            (f"POST /v1/messages p50/p95/p99 during {args.busy_recipients:,}",
             probe.format(**results["post_during_campaign_ms"])),
            (f"one emulated DynamoDB GetItem p50/p95/p99 during {args.busy_recipients:,}",
             probe.format(**results["dynamodb_get_busy_ms"])),
            (f"worker peak RSS after {args.busy_recipients:,}", f"{results['worker_peak_rss_busy_mb']:.0f} MB"),
            ("worker's transactional child process peak RSS, then",
             f"{results['worker_child_peak_rss_mb']:.0f} MB"),
            *((f"emulator held by {op} during {args.busy_recipients:,}",
               f"{t['total_ms'] / 1000:.1f} s over {t['count']:,} requests (slowest {t['max_ms']:.0f} ms"
               + (f": {t['slowest']})" if t.get("slowest") else ")"))
              for op, t in list(results["emulator_busy_by_operation"].items())[:5]),
        ]
    if "large_campaign_per_s" in results:
        rows += [
            (f"contact import, {args.large_recipients:,}", f"{results['large_import_contacts_per_s']:,.0f} contacts/s"),
            (f"campaign, {args.large_recipients:,} recipients", f"{results['large_campaign_per_s']:,.0f} emails/s "
             f"({results['large_campaign_per_s'] / results['campaign_per_s']:.2f} of the {args.recipients:,} rate)"),
            (f"worker CPU per email, {args.large_recipients:,}", f"{results['large_worker_cpu_ms_per_email']:.2f} ms"),
            (f"worker peak RSS after {args.large_recipients:,}", f"{results['worker_peak_rss_large_mb']:.0f} MB"),
        ]
    if "submission" in results:
        sub = results["submission"]
        rows.append((f"SMTP submission accepted, {sub['clients']} clients (STARTTLS+AUTH)",
                     f"{sub['per_s']:,.0f} messages/s ({sub['refused']} refused)"))
    rows += [(f"plan path peak RSS, {int(size):,} audience (start)",
              f"{r['peak_mb']:.0f} MB ({r['before_mb']:.0f} MB)") for size, r in results["planner_rss_mb"].items()]
    rows += [(f"cold start: functions/{k}", f"{v:.0f} ms") for k, v in results["cold_start_ms"].items()]
    if "transactional_api_errors" in results:
        rows.append(("transactional API requests refused", str(len(results["transactional_api_errors"]))))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  value\n{'-' * width}  -----")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    m = results["machine"]
    print(f"\nmachine: {m['cores']} cores, {m['cpu']}, {m['ram_gib']} GiB, load at start {m['load_average_at_start']}")
    print(f"sink: {results['sink']}\nsaved: {args.out}")


if __name__ == "__main__":
    main()
