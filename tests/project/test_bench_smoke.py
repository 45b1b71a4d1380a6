"""A tiny run of every benchmark script: each starts what it needs, finishes and prints its figures. The
figures themselves are not judged here (docs/PERFORMANCE.md); a script that breaks is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FIGURE = r"[\d,]+(\.\d+)?"


def run(repo_root: Path, script: str, *args: str, timeout: float = 240) -> str:
    # the scripts start their own local stack, so none of the test session's settings may leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETMAIL_")}
    done = subprocess.run([sys.executable, str(repo_root / "bench" / script), *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_run_prints_every_figure_and_saves_them(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    stdout = run(repo_root, "run.py", "--recipients", "200", "--raw", "50", "--latency-sends", "20",
                 "--latency-rate", "40", "--busy-recipients", "200", "--planner-audiences", "1000", "--no-install",
                 "--submission-messages", "40",
                 "--out", str(out))
    results = json.loads(out.read_text())
    assert results["raw_loop_per_s"] > 0 and results["campaign_per_s"] > 0
    assert 0 < results["dynamodb_requests_per_100"] < 100 and results["nats_messages_per_100"] > 0
    assert results["transactional_ms"]["count"] == 20 and results["transactional_api_errors"] == []
    for figures in (results["transactional_ms"], results["transactional_during_campaign_ms"]):
        assert 0 < figures["claim_p50"] <= figures["p50"]
    assert results["dynamodb_get_idle_ms"]["count"] > 0
    assert set(results["cold_start_ms"]) == {"api", "ses_events", "scheduler"}
    assert results["planner_rss_mb"]["1000"]["planned"] == 1000
    assert results["submission"]["accepted"] == 40 and results["submission"]["refused"] == 0
    assert results["worker_cpu_ms_per_email"] > 0
    assert results["post_idle_ms"]["count"] == 20 and results["post_during_campaign_ms"]["count"] == 20
    # the first and last message are timed at smtp-sink when it is there, else by the campaign's counters
    assert ("campaign_first_message_s" in results) == results["sink"].startswith("Postfix")
    assert re.search(rf"campaign, 200 recipients, 2 workers, send → last at sink\s+{FIGURE} emails/s", stdout)
    assert re.search(r"POST /v1/messages p50/p95/p99 during 200\s+\d+ / \d+ / \d+ ms", stdout)
    assert re.search(r"transactional accept→SMTP p50/p95/p99, idle\s+\d+ / \d+ / \d+ ms", stdout)


@pytest.mark.parametrize(("script", "args", "line"), [
    ("bench_mime.py", (), rf"jetmail.messaging.mime.build_message:\s+{FIGURE} messages/s"),
    ("bench_queue.py", ("--jobs", "300", "--single", "100", "--samples", "3"),
     rf"worker, no-op task:\s+{FIGURE} jobs/s"),
    ("bench_smtp.py", ("--messages", "50"),
     rf"jetmail sink \(aiosmtpd\)\s+pool=\d+ pipelined\s+50 msgs of 4096 B\s+{FIGURE} msg/s"),
    ("bench_ratelimit.py", ("--rate", "20", "--workers", "2", "--seconds", "2", "--concurrency", "4"),
     r"achieved/configured \d\.\d{3}"),
    ("bench_imports.py", ("--runs", "1", "--top", "3"), rf"\nscheduler\s+{FIGURE}\s+{FIGURE}\s+{FIGURE}"),
    ("bench_plan.py", ("--sizes", "150,300"), r"\n\s+300\s+452\s+\d+ms\s+\d+ms\s+\d+ms\s+\d+ms\s+1\s+\d+ms"),
    ("bench_webhooks.py", ("--recipients", "100", "--webhook-concurrency", "20", "--cache-s", "1"),
     rf"campaign, 100 recipients, sent webhooks\s+{FIGURE} emails/s"),
], ids=["mime", "queue", "smtp", "ratelimit", "imports", "plan", "webhooks"])
def test_each_script_prints_its_figures(repo_root: Path, script: str, args: tuple[str, ...], line: str) -> None:
    assert re.search(line, run(repo_root, script, *args))
