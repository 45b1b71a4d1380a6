"""Cold start of the Lambda handlers: how long each functions/*/app.py takes to load in a fresh interpreter,
and, with ``--requests``, how long each function's first invocations take after it.

Each run is a new ``python -X importtime`` process that loads the handler module by file, the way the Lambda
runtime does (its module-level code included: settings, clients, the FastAPI app), with the environment
template.yaml gives the functions and ``AWS_LAMBDA_FUNCTION_NAME`` set, so Powertools behaves as in Lambda.
Nothing is contacted while a module loads, so no local stack is needed. One uncounted run per handler first
compiles the bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped for the runs), so no run pays for compiling.

Per handler it prints the median over the runs of: the wall time of loading the module (the figure the
< 300 ms target is about), the process's CPU time (less disturbed by other load on a shared machine), and the
sum of ``-X importtime``'s top-level imports; for the API, the part of the load that is FastAPI's own import
and the rest; then the top-level packages that cost the most (self time summed per package, median run).

``--requests`` also measures a whole cold start of each function: it starts a local stack of its own
(nats-server and moto, in a temporary folder), makes the tables, streams and an API key, and in each fresh
process loads the handler and then invokes it twice, as Lambda does:

- api: API Gateway (payload v2) events through Mangum, ``POST /v1/messages`` with an invalid body (422, after
  the key's DynamoDB read and its NATS request limit), then ``GET /v1/messages/{id}`` for an unknown id (404);
- ses_events: the SNS-delivered ``events/ses_bounce_permanent.json``, then ``events/ses_event_delivery.json``
  (a hard bounce and a delivery, through the same intake as in Lambda);
- scheduler: ``events/scheduler_tick.json`` twice (a tick against the empty tables).

It prints the load, the first invocation, load + first invocation (the cold start the caller waits for), and
the second invocation (the warm process).

    .venv/bin/python bench/bench_imports.py            # 7 runs per handler
    .venv/bin/python bench/bench_imports.py --runs 3 --top 5 --json out.json
    .venv/bin/python bench/bench_imports.py --handler api --requests
    .venv/bin/python bench/bench_imports.py --handler ses_events --handler scheduler --requests
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ("api", "ses_events", "scheduler")

# What the functions' environment holds in Lambda (template.yaml Globals), with placeholder values: loading a
# handler reads settings but contacts nothing.
LAMBDA_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "jetmail-bench",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "JETMAIL_TABLE_NAME": "jetmail-bench",
    "JETMAIL_STATS_TABLE_NAME": "jetmail-bench-stats",
    "JETMAIL_AWS_REGION": "us-east-1",
    "JETMAIL_NATS_URL": "nats://127.0.0.1:4222",
    "JETMAIL_PROVIDER": "ses",
    "JETMAIL_SIGNING_SECRET": "bench-signing-secret-0123456789abcdef",
    "JETMAIL_PUBLIC_BASE_URL": "https://mail.example.com",
    "JETMAIL_DEFAULT_FROM": "Bench <bench@example.com>",
    "JETMAIL_COMPANY_NAME": "Bench",
    "JETMAIL_COMPANY_ADDRESS": "1 Bench Road",
    "POWERTOOLS_SERVICE_NAME": "jetmail",
    "POWERTOOLS_METRICS_NAMESPACE": "jetmail",
    # template.yaml's default (XRaySdkTracing=false); --env POWERTOOLS_TRACE_DISABLED=false measures the SDK's cost
    "POWERTOOLS_TRACE_DISABLED": "true",
}

# Loads the handler by file (as the Lambda runtime does) and prints the wall and CPU time of that alone; with
# a module name as argv[2], also the wall and CPU time of the part of the load that is that module's import
# (imported first, as the handler's own imports would).
LOADER = """
import importlib, importlib.util, sys, time
cpu, wall = time.process_time(), time.perf_counter()
if len(sys.argv) > 2:
    importlib.import_module(sys.argv[2])
first = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
total = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
print(f"{total[0]:.3f} {total[1]:.3f} {first[0]:.3f} {first[1]:.3f}")
"""
# The part of a handler's load the bench reports apart: the API's is FastAPI's own import (``jetmail.api``
# imports it, with the OpenAPI models deferred), a floor no change to jetmail's own modules can lower.
SPLIT = {"api": "jetmail.api"}

# Loads a handler by file, then invokes it with each event of the JSON file argv[2], as Lambda would; prints
# one JSON line: the load and each invocation, wall and CPU ms, with the answer's HTTP status ("ok" for a
# handler that answers no HTTP request).
REQUESTS = """
import importlib.util, json, sys, time

class Context:
    function_name = "jetmail-bench"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jetmail-bench"
    aws_request_id = "bench"

    @staticmethod
    def get_remaining_time_in_millis():
        return 30_000

def timed(call):
    cpu, wall = time.process_time(), time.perf_counter()
    result = call()
    return result, (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000

def load():
    spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

module, wall, cpu = timed(load)
out = [{"wall_ms": wall, "cpu_ms": cpu}]
for event in json.load(open(sys.argv[2])):
    answer, wall, cpu = timed(lambda: module.handler(event, Context()))
    out.append({"wall_ms": wall, "cpu_ms": cpu, "status": answer.get("statusCode", "ok")})
print(json.dumps(out))
"""

LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def run_once(handler: str, env: dict[str, str]) -> dict[str, Any]:
    path = ROOT / "functions" / handler / "app.py"
    split = [SPLIT[handler]] if handler in SPLIT else []
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", LOADER, str(path), *split], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"functions/{handler}/app.py failed to load:\n{done.stderr[-3000:]}")
    wall, cpu, first_wall, first_cpu = (float(x) for x in done.stdout.split())
    imports_us = 0
    packages: Counter[str] = Counter()
    for line in done.stderr.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        self_us, cumulative_us, indent, name = int(match[1]), int(match[2]), match[3], match[4]
        packages[name.split(".")[0]] += self_us
        # importtime indents nested imports by two spaces after the one space every line has
        if len(indent) == 1:
            imports_us += cumulative_us
    return {"wall_ms": wall, "cpu_ms": cpu, "split_wall_ms": first_wall, "split_cpu_ms": first_cpu,
            "imports_ms": imports_us / 1000,
            "packages_ms": {k: v / 1000 for k, v in packages.items()}}


def lambda_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Only what a Lambda function would have: none of the calling shell's JETMAIL_*, AWS_* or POWERTOOLS_*
    (and bytecode written, as a deployed layer would hold it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETMAIL_", "AWS_", "POWERTOOLS_"))
           and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **LAMBDA_ENV, **(extra or {})}


def measure(handler: str, runs: int, env: dict[str, str]) -> dict[str, Any]:
    run_once(handler, env)  # compiles the bytecode; not counted
    samples = [run_once(handler, env) for _ in range(runs)]
    median_run = sorted(samples, key=lambda s: s["wall_ms"])[len(samples) // 2]
    return {
        "wall_ms": statistics.median(s["wall_ms"] for s in samples),
        "wall_min_ms": min(s["wall_ms"] for s in samples),
        "cpu_ms": statistics.median(s["cpu_ms"] for s in samples),
        "imports_ms": statistics.median(s["imports_ms"] for s in samples),
        "split": SPLIT.get(handler),
        "split_wall_ms": statistics.median(s["split_wall_ms"] for s in samples),
        "split_cpu_ms": statistics.median(s["split_cpu_ms"] for s in samples),
        "rest_wall_ms": statistics.median(s["wall_ms"] - s["split_wall_ms"] for s in samples),
        "rest_cpu_ms": statistics.median(s["cpu_ms"] - s["split_cpu_ms"] for s in samples),
        "runs": runs,
        "packages_ms": dict(Counter(median_run["packages_ms"]).most_common()),
    }


@contextmanager
def local_stack() -> Iterator[dict[str, str]]:
    """nats-server and moto of the bench's own, with the tables, streams and an admin API key: the variables
    that point the API function at them, the key's token included (``BENCH_API_TOKEN``)."""
    from jetmail.bootstrap import bootstrap
    from jetmail.config import Settings
    from jetmail.devstack.stack import LocalStack
    from jetmail.services import Services

    with tempfile.TemporaryDirectory(prefix="jetmail-bench-") as root:
        stack = LocalStack(root, preferred_ports=False)
        state = stack.up(["nats", "moto"])
        try:
            env = {"JETMAIL_NATS_URL": state.services["nats"].url,
                   "JETMAIL_AWS_ENDPOINT_URL": state.services["moto"].url,
                   "JETMAIL_AWS_ACCESS_KEY_ID": "local", "JETMAIL_AWS_SECRET_ACCESS_KEY": "local"}
            os.environ.update({**LAMBDA_ENV, **env})  # this process makes the tables and the key as the function
            settings = Settings(_env_file=None)
            for _ in bootstrap(settings, create_table=True):
                pass
            _, token = Services(settings).api_keys.create("bench", scopes=["admin"])
            yield {**env, "BENCH_API_TOKEN": token}
        finally:
            stack.down()


def handler_events(handler: str, token: str) -> list[dict[str, Any]]:
    """The two events a handler is invoked with (api: a POST /v1/messages with an invalid body, then a
    GET /v1/messages/{id} for an unknown id)."""
    if handler == "ses_events":
        return [json.loads((ROOT / "events" / name).read_text())
                for name in ("ses_bounce_permanent.json", "ses_event_delivery.json")]
    if handler == "scheduler":
        return [json.loads((ROOT / "events" / "scheduler_tick.json").read_text())] * 2
    events = []
    for name, body in (("api_send_message.json", json.dumps({"to": "not an address"})),
                       ("api_get_message.json", None)):
        event = json.loads((ROOT / "events" / name).read_text().replace("REPLACE_WITH_API_KEY", token))
        if body is not None:
            event["body"] = body
        events.append(event)
    return events


def measure_requests(handler: str, runs: int, env: dict[str, str], events_file: Path) -> dict[str, Any]:
    path = ROOT / "functions" / handler / "app.py"

    def once() -> list[dict[str, Any]]:
        done = subprocess.run([sys.executable, "-c", REQUESTS, str(path), str(events_file)], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"functions/{handler}/app.py failed:\n{done.stderr[-3000:]}")
        steps: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        return steps

    once()  # compiles the bytecode; not counted
    samples = [once() for _ in range(runs)]
    figures: dict[str, Any] = {"runs": runs, "statuses": [step["status"] for step in samples[0][1:]]}
    for unit in ("wall_ms", "cpu_ms"):
        figures[unit] = {
            "load": statistics.median(s[0][unit] for s in samples),
            "first_request": statistics.median(s[1][unit] for s in samples),
            "load_and_first_request": statistics.median(s[0][unit] + s[1][unit] for s in samples),
            "second_request": statistics.median(s[2][unit] for s in samples),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per handler (median reported)")
    parser.add_argument("--top", type=int, default=8, help="packages listed per handler")
    parser.add_argument("--handler", action="append", choices=HANDLERS, help="only this handler (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable for the handlers' environment, e.g. POWERTOOLS_TRACE_DISABLED=false")
    parser.add_argument("--requests", action="store_true",
                        help="also time each handler's first two invocations after the load, against a local stack "
                             "of its own")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env = lambda_env(dict(item.partition("=")[::2] for item in args.env))
    results: dict[str, Any] = {handler: measure(handler, args.runs, env) for handler in args.handler or HANDLERS}

    print(f"handler module load, median of {args.runs} fresh processes (python -X importtime)")
    print(f"{'handler':<12} {'wall ms':>8} {'min ms':>8} {'cpu ms':>8} {'imports ms':>10}")
    for handler, r in results.items():
        print(f"{handler:<12} {r['wall_ms']:>8.0f} {r['wall_min_ms']:>8.0f} {r['cpu_ms']:>8.0f} "
              f"{r['imports_ms']:>10.0f}")
    for handler, r in results.items():
        if r["split"]:
            print(f"{handler}: of that, {r['split']} (FastAPI's own import) {r['split_wall_ms']:.0f} ms wall, "
                  f"{r['split_cpu_ms']:.0f} ms CPU; the rest {r['rest_wall_ms']:.0f} ms wall, "
                  f"{r['rest_cpu_ms']:.0f} ms CPU")
    for handler, r in results.items():
        top = list(r["packages_ms"].items())[:args.top]
        print(f"\n{handler}: top packages by import self time (ms)")
        print("  " + ", ".join(f"{name} {ms:.0f}" for name, ms in top))
    if args.requests:
        with local_stack() as stack, tempfile.TemporaryDirectory() as scratch:
            token = stack.pop("BENCH_API_TOKEN")
            for handler in args.handler or HANDLERS:
                events_file = Path(scratch) / f"{handler}.json"
                events_file.write_text(json.dumps(handler_events(handler, token)))
                results[f"{handler}_requests"] = measure_requests(handler, args.runs, {**env, **stack}, events_file)
        for handler in args.handler or HANDLERS:
            requests = results[f"{handler}_requests"]
            print(f"\n{handler} cold start with two invocations, median of {args.runs} fresh processes (answers "
                  f"{', '.join(map(str, requests['statuses']))})")
            print(f"{'':<8} {'load':>8} {'1st inv':>8} {'load+1st':>9} {'2nd inv':>8}")
            for unit in ("wall_ms", "cpu_ms"):
                r = requests[unit]
                print(f"{unit[:-3] + ' ms':<8} {r['load']:>8.0f} {r['first_request']:>8.0f} "
                      f"{r['load_and_first_request']:>9.0f} {r['second_request']:>8.0f}")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
