"""Worker logs and metrics: JSON lines carrying the job's ids, and EMF records when metrics are enabled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, stop_process, wait_until
from jetmail.messaging.providers import OutboundMessage, SmtpProvider
from jetmail.observability import MeteredProvider, WorkerMetrics
from stacktools import Isolated, make_settings


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # a stack of its own, so no other worker of the session takes the job whose log we read
    own = Isolated(stack, tmp_path_factory.mktemp("observability"))
    own.env["JETMAIL_METRICS_ENABLED"] = "true"
    own.start_worker()
    yield own
    own.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_worker_logs_a_job_as_json_with_its_message_id_and_prints_emf(isolated: Isolated, mailbox: Mailbox,
                                                                    unique: str) -> None:
    # GIVEN a worker with metrics enabled, and a message sent through the API
    to = f"observed-{unique}@example.com"
    with TestClient(create_app(isolated.settings, services=isolated.services),
                    headers={"Authorization": f"Bearer {isolated.token}"}) as client:
        resp = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                                 "context": {"reset_url": "https://example.com/r",
                                                             "expires_in_minutes": 30}})
    assert resp.status_code == 202, resp.text
    message_id = resp.json()["id"]
    # WHEN the worker delivers it and is stopped (SIGTERM flushes the metrics still buffered)
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=30, what="observed mail")
    log = isolated.root / "worker.log"
    wait_until(lambda: any(r.get("message_id") == message_id and r.get("outcome") == "ack"
                           for r in json_lines(log.read_text())), timeout=15, what="the job's log line")
    assert isolated.worker is not None
    stop_process(isolated.worker.pid)
    isolated.worker = None
    records = json_lines(log.read_text())
    # THEN the job's lines are JSON with the job id, task and message id
    job_lines = [r for r in records if r.get("message_id") == message_id and "level" in r]
    assert job_lines
    assert all(r["service"] == "jetmail" and r["task"] == "send_message" and r["job_id"] for r in job_lines)
    assert any(r.get("outcome") == "ack" and r["queue"] == "email_transactional" for r in job_lines)
    # and the send was counted in an EMF record with the CloudWatch directive
    emf = [r for r in records if "_aws" in r]
    sent = [r for r in emf if "EmailsSent" in r]
    assert sent and sum(sum(r["EmailsSent"]) for r in sent) >= 1
    directive = sent[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "jetmail" and directive["Dimensions"] == [["service"]]
    assert {"Name": "SendLatency", "Unit": "Milliseconds"} in directive["Metrics"]
    assert any("QueueWait" in r for r in emf)


@pytest.mark.parametrize("enabled", [True, False])
def test_metered_provider_prints_emf_only_when_metrics_are_enabled(
        stack: StackState, mailbox: Mailbox, unique: str, enabled: bool, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the real SMTP provider wrapped as the worker wraps it, with or without metrics
    import asyncio

    metrics = WorkerMetrics() if enabled else None
    provider = MeteredProvider(SmtpProvider(make_settings(stack)), metrics=metrics)
    to = f"metered-{enabled}-{unique}@example.com"
    raw = f"From: a@example.com\r\nTo: {to}\r\nSubject: hi\r\nMessage-ID: <{unique}@example.com>\r\n\r\nhi\r\n"

    async def send() -> None:
        try:
            await provider.send(OutboundMessage(mail_from="a@example.com", recipients=[to], raw=raw.encode(),
                                                message_id=f"msg_{unique}", tags={"message_id": f"msg_{unique}"}))
        finally:
            await provider.close()

    # WHEN it sends one message and the metrics are flushed
    asyncio.run(send())
    if metrics is not None:
        metrics.flush()
    # THEN the mail arrived, and an EMF record was printed only with metrics on
    assert len(mailbox.for_recipient(to)) == 1
    emf = [r for r in json_lines(capsys.readouterr().out) if "_aws" in r]
    if enabled:
        assert len(emf) == 1 and emf[0]["EmailsSent"] == [1.0] and len(emf[0]["SendLatency"]) == 1
        assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "jetmail"
    else:
        assert emf == []
