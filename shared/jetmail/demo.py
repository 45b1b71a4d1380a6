"""``make demo``: start the local stack, push mail and jobs through it, show what happened, stop.

Run as ``python -m jetmail.demo``. It leaves a stack it did not start running.
"""

from __future__ import annotations

import email.policy
import os
import sys
import time
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

import httpx

from jetmail.devstack.cli import start
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import DEFAULT_ROOT, LocalStack, StackError, wait_until


def step(title: str) -> None:
    print(f"\n== {title}")


def log_lines(root: Path, needle: str) -> list[str]:
    lines: list[str] = []
    for log in sorted((root / "logs").glob("worker*.log")):
        lines += [line.strip() for line in log.read_text(errors="replace").splitlines() if needle in line]
    return lines


def run(root: Path = DEFAULT_ROOT) -> None:
    stack = LocalStack(root)
    already_running = bool(stack.load().services)
    step("starting the local stack (nats-server, moto, SMTP sink, API, workers)")
    state = start(stack, echo=lambda line: print(f"  {line}"))
    for name, svc in state.services.items():
        print(f"  {name:<22} pid {svc.pid:<7} {svc.url}")
    try:
        from jetmail.config import Settings
        from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
        from jetmail.queue import Backoff
        from jetmail.services import Services

        settings = Settings(_env_file=None)  # start() exported the stack's settings
        services = Services(settings)

        step("loading the example templates and creating an API key")
        for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
            head = services.templates.head(content.name, content.locale, cached=False)
            if head is None or head.model_dump(exclude={"version"}) != content.model_dump():
                services.templates.save(content)
        print(f"  {len(services.templates.list())} template versions available")
        key, token = services.api_keys.create("demo")
        print(f"  key {key.key_id} created (shown once; the demo keeps it in memory)")

        step("enqueueing demo jobs: one now, one in 3 s, and one that always fails")
        run_id = str(int(time.time()))
        queue = services.queue
        queue.enqueue("demo_hello", queue="email_maintenance", name=f"now-{run_id}")
        queue.enqueue_in(timedelta(seconds=3), "demo_hello", queue="email_maintenance", name=f"later-{run_id}")
        failing = queue.enqueue("demo_fail", queue="email_maintenance", max_retries=2,
                                backoff=Backoff(base=0.2, max=1, jitter=0.1), reason=f"demo failure {run_id}")
        print("  enqueued demo_hello (now), demo_hello (+3 s), demo_fail (2 retries)")

        step("sending a welcome email through the HTTP API")
        api = state.services["api"].url
        to = f"ada-{run_id}@example.com"
        resp = httpx.post(f"{api}/v1/messages", headers={"Authorization": f"Bearer {token}"}, json={
            "template": "welcome", "to": to, "name": "Ada Lovelace", "language": "en",
            "context": {"login_url": "https://app.example.com/login"}})
        print(f"  POST /v1/messages → {resp.status_code} {resp.json().get('id')}")
        resp.raise_for_status()
        message_id = resp.json()["id"]

        box = Mailbox(state.maildir)
        entry = wait_until(lambda: box.for_recipient(to), timeout=30, what="the welcome email")[0]
        msg = message_from_bytes(box.raw(entry.id), policy=email.policy.default)
        print(f"  received by the SMTP sink ({entry.size} bytes, stored in {box.maildir}/{entry.id}.eml):")
        for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
            if msg[header]:
                print(f"    {header}: {msg[header]}")
        text = msg.get_body(preferencelist=("plain",))
        if text is not None:
            print("    --- text part ---")
            for line in text.get_content().strip().splitlines()[:12]:
                print(f"    {line}")
        status = httpx.get(f"{api}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {token}"}).json()
        print(f"  GET /v1/messages/{message_id} → status {status['status']}")

        step("a hard bounce: the welcome series to SES's bounce simulator address")
        headers = {"Authorization": f"Bearer {token}"}
        bouncer = f"bounce+{run_id}@simulator.amazonses.com"
        enrolment = httpx.post(f"{api}/v1/sequences", headers=headers, json={
            "sequence": "welcome", "to": bouncer, "name": "Bounce Test", "context": {
                "login_url": "https://app.example.com/login", "dashboard_url": "https://app.example.com/",
                "docs_url": "https://docs.example.com/", "steps": [], "tips": [],
                "blog_url": "https://example.com/blog"}}).json()
        print(f"  POST /v1/sequences → enrolment {enrolment['id']} with {len(enrolment['steps'])} steps")
        bounced = wait_until(lambda: services.suppressions.get(bouncer), timeout=30, what="the bounce")
        print(f"  the simulator reported a permanent bounce → suppressed {bounced.email} (reason {bounced.reason})")
        steps = httpx.get(f"{api}/v1/sequences/{enrolment['id']}", headers=headers).json()["steps"]
        for s in steps:
            print(f"    step {s['index'] + 1} {s['template']:<16} due {s['send_at'][:19]}  → {s['status']}")

        step("what the workers did with the demo jobs")
        def demo_hellos() -> list[str] | None:
            lines = log_lines(root, run_id)
            return lines if sum("hello, " in line for line in lines) >= 2 else None

        hellos = wait_until(demo_hellos, timeout=20, what="demo jobs")
        for line in hellos:
            if "hello, " in line:
                print(f"  {line}")
        dead = wait_until(lambda: [d for d in queue.dlq_list(queue="email_maintenance")
                                 if d.job_id == failing.job_id], timeout=20, what="the dead letter")
        print(f"  demo_fail ended in the dead-letter queue after {dead[0].attempts} attempts: {dead[0].error}")
        print("  (inspect with `jetmail dlq list`, retry with `jetmail dlq replay SEQ`)")
        services.api_keys.revoke(key.key_id)
        queue.close()
    finally:
        if already_running:
            step("the stack was running before the demo; leaving it up (`jetmail dev down` stops it)")
        else:
            step("stopping what the demo started")
            print(f"  stopped: {', '.join(stack.down())}")


def main() -> None:
    try:
        run(Path(os.environ.get("JETMAIL_DEV_ROOT", DEFAULT_ROOT)))
    except (StackError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
