"""Every role in template.yaml allows every AWS call its component's code makes.

Each component's real code paths run against the local stack while a botocore hook records each call as
the IAM action and resource AWS authorises (tests/iamcheck.py); the calls are then evaluated against the
statements the template gives that component's role, with SAM's policy templates expanded by
samtranslator and the template's ARNs resolved to the local stack's names. A permission missing from the
template fails the test with the call that needs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from iamcheck import Call, TemplateRoles, record, recorded
from jetmail.aws.clients import aws_client, reset_aws_clients
from jetmail.config import Settings, get_settings
from jetmail.devstack.stack import StackState, free_port, http_ready, stop_process, tcp_ready, wait_until
from jetmail.services import Services
from lambdas import LambdaContext, event, load_handler
from stacktools import Isolated, stack_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION_SET = "jetmail"  # the template's SesConfigurationSetName default


@pytest.fixture(scope="module")
def alerts_topic(settings: Settings) -> str:
    arn: str = aws_client("sns", settings).create_topic(Name="jetmail-iam-alerts")["TopicArn"]
    return arn


@pytest.fixture(scope="module")
def roles(settings: Settings, alerts_topic: str) -> TemplateRoles:
    return TemplateRoles(ROOT / "template.yaml", physical={
        "Table": settings.table_name, "StatsTable": settings.stats_table,
        "AlertsTopic": alerts_topic.rsplit(":", 1)[1], "SesConfigurationSet": CONFIGURATION_SET})


@pytest.fixture
def calls(tmp_path: Path) -> Iterator[Path]:
    """Record this process's AWS calls into a file; afterwards, its clients are plain ones again."""
    path = tmp_path / "calls.jsonl"
    record(path)
    yield path
    reset_aws_clients()


@pytest.fixture
def lambda_env(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, alerts_topic: str) -> Iterator[None]:
    for key, value in app_env.items():
        if key.startswith("JETMAIL_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    # as template.yaml configures the scheduler: metrics on, alerts to the alerts topic
    monkeypatch.setenv("JETMAIL_METRICS_ENABLED", "true")
    monkeypatch.setenv("JETMAIL_ALERTS_TOPIC_ARN", alerts_topic)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def assert_allowed(roles: TemplateRoles, role: str, made: list[Call], *, expect: set[str]) -> None:
    assert expect <= {c.action for c in made}, f"the code paths did not run: {expect - {c.action for c in made}}"
    denied = roles.denied(role, made)
    assert not denied, f"{role} in template.yaml does not allow: " + "; ".join(
        f"{c.action} on {c.resource} ({c.operation})" for c in denied)


def test_the_check_refuses_what_a_role_does_not_grant(roles: TemplateRoles, settings: Settings) -> None:
    table = f"arn:aws:dynamodb:us-east-1:123456789012:table/{settings.table_name}"
    assert not roles.denied("ApiFunctionRole", [Call("dynamodb:PutItem", table)])
    assert roles.denied("ApiFunctionRole", [Call("dynamodb:PutItem", table.replace(settings.table_name, "other"))])
    assert roles.denied("ApiFunctionRole", [Call("ses:SendEmail", "*")])
    assert roles.denied("WorkerTaskRole", [Call("cloudwatch:PutMetricData", "*", (("cloudwatch:namespace", "x"),))])
    assert {"ApiFunctionRole", "SesEventsFunctionRole", "SchedulerFunctionRole", "WorkerTaskRole", "SmtpTaskRole",
            "BounceTaskRole"} <= set(roles.roles())


def test_scheduler_role_allows_a_tick_and_an_alert(lambda_env: None, services: Services, roles: TemplateRoles,
                                                   calls: Path, alerts_topic: str) -> None:
    from jetmail.deliverability.reputation import ReputationMonitor

    handler = load_handler("scheduler").handler
    tick = event("scheduler_tick.json")
    tick["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    handler(tick, LambdaContext())
    lambda_services = Services(get_settings())
    ReputationMonitor(stats=lambda_services.counters, store=lambda_services.campaign_store,
                      campaigns=lambda_services.campaigns, queue=lambda_services.queue,
                      settings=lambda_services.settings).alert(["marketing stopped"], {
        "bounce_rate": 0.1, "complaint_rate": 0.0, "sent": 100, "window_hours": 24})
    assert_allowed(roles, "SchedulerFunctionRole", recorded(calls),
                   expect={"dynamodb:Query", "cloudwatch:PutMetricData", "sns:Publish"})


def test_ses_events_role_allows_a_notification(lambda_env: None, services: Services, roles: TemplateRoles,
                                               calls: Path, unique: str) -> None:
    handler = load_handler("ses_events").handler
    for name in ("ses_bounce_permanent.json", "ses_complaint.json", "ses_event_delivery.json",
                 "ses_event_open.json", "ses_event_click.json"):
        handler(event(name, **{"ada@example.com": f"iam-{unique}@example.com"}), LambdaContext())
    assert_allowed(roles, "SesEventsFunctionRole", recorded(calls), expect={"dynamodb:PutItem"})


def test_api_role_allows_every_route_family(lambda_env: None, services: Services, api_token: str,
                                            roles: TemplateRoles, calls: Path, unique: str) -> None:
    from jetmail.api.app import create_app

    # the sample events through the Lambda handler
    handler = load_handler("api").handler
    key = {"REPLACE_WITH_API_KEY": api_token}
    lst = services.contacts.create_list(f"iam-{unique}")
    for name, extra in (("api_health.json", {}), ("api_list_templates.json", key),
                        ("api_send_message.json", {**key, "signup-ada-2025-11-28": f"iam-{unique}"}),
                        ("api_upsert_contact.json", {**key, "REPLACE_WITH_LIST_ID": lst.id}),
                        ("api_create_campaign.json", {**key, "REPLACE_WITH_LIST_ID": lst.id})):
        answer = handler(event(name, **extra), LambdaContext())
        assert answer["statusCode"] < 500, (name, answer)
    # every other route family, in the same process
    auth = {"Authorization": f"Bearer {api_token}"}
    client = TestClient(create_app(get_settings()), headers=auth)
    to = f"iam-{unique}@example.com"
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/v1/templates/welcome", None), ("GET", "/v1/templates/welcome/versions", None),
        ("POST", "/v1/templates/welcome/preview", {"context": {"login_url": "https://example.com"}}),
        ("PUT", f"/v1/contacts/{to}", {"name": "Iam", "lists": {lst.id: "subscribed"}}),
        ("GET", f"/v1/contacts/{to}", None), ("GET", f"/v1/lists/{lst.id}/members", None),
        ("POST", "/v1/lists", {"name": f"iam-2-{unique}"}), ("GET", "/v1/lists", None),
        ("POST", "/v1/segments", {"name": "s", "criteria": {"field": "name", "op": "exists"}}),
        ("GET", "/v1/segments", None), ("GET", "/v1/campaigns", None),
        ("POST", "/v1/suppressions", {"email": f"sup-{to}", "reason": "manual"}),
        ("GET", "/v1/suppressions", None), ("DELETE", f"/v1/suppressions/sup-{to}", None),
        ("POST", "/v1/sequences", {"sequence": "welcome", "to": to, "context": {"login_url": "https://x.io"}}),
        ("GET", "/v1/stats", None), ("GET", "/v1/sending/status", None), ("GET", "/v1/audit", None),
        ("DELETE", f"/v1/contacts/{to}?erase=true", None),
    ]
    for method, path, body in requests:
        answer = client.request(method, path, json=body)
        assert answer.status_code < 500, (method, path, answer.text)
    campaign_id = client.get("/v1/campaigns").json()["data"][0]["id"]
    for path in (f"/v1/campaigns/{campaign_id}/send", f"/v1/campaigns/{campaign_id}/pause",
                 f"/v1/campaigns/{campaign_id}/cancel"):
        assert client.post(path).status_code < 500
    assert client.get(f"/v1/campaigns/{campaign_id}/report").status_code < 500
    assert_allowed(roles, "ApiFunctionRole", recorded(calls),
                   expect={"dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:GetItem"})


@pytest.fixture
def ses_worker(stack: StackState, tmp_path: Path) -> Iterator[tuple[Path, Path, Services]]:
    """A `jetmail worker` process on the SES provider, as template.yaml runs it, recording its AWS calls, on a
    NATS and moto of its own: the session's SMTP worker must not take these jobs."""
    own = Isolated(stack, tmp_path / "stack")
    aws_client("sesv2", own.settings).create_email_identity(EmailIdentity="example.com")
    path = tmp_path / "worker-calls.jsonl"
    port = free_port()
    log = tmp_path / "worker.log"
    env = {**own.env, "JETMAIL_PROVIDER": "ses", "JETMAIL_SES_CONFIGURATION_SET": CONFIGURATION_SET,
           "JETMAIL_METRICS_ENABLED": "true",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    program = (f"import iamcheck; iamcheck.record({str(path)!r}); from jetmail.cli import main; "
               # one process, so the recorder sees the transactional lane's calls too (a child process started
               # by --transactional-process makes the same calls, unrecorded)
               f"main(['worker', 'email_transactional', 'email_campaign', '--health-port', '{port}', "
               f"'--no-transactional-process'])")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="SES worker", proc=proc,
                   log=log)
        yield path, log, own.services
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        own.close()


def test_worker_role_allows_start_up_on_ses_a_transactional_send_and_a_campaign_batch(
        ses_worker: tuple[Path, Path, Services], roles: TemplateRoles, unique: str) -> None:
    from jetmail.audience.model import ContactUpsert
    from jetmail.campaigns.model import AudienceSource, CampaignCreate
    from jetmail.messaging.messages import SendRequest

    path, log, services = ses_worker
    message, *_ = services.messages.submit(SendRequest.model_validate(
        {"template": "password_reset", "to": f"iam-reset-{unique}@example.com",
         "context": {"reset_url": "https://example.com/r", "expires_in_minutes": 5}}))
    lst = services.contacts.create_list(f"iam-worker-{unique}")
    for n in range(3):
        services.contacts.upsert(f"iam-c{n}-{unique}@example.com", ContactUpsert(lists={lst.id: "subscribed"}))
    campaign = services.campaigns.create(CampaignCreate(name="iam", template="welcome",
                                                        context={"login_url": "https://example.com"},
                                                        audience=[AudienceSource(list_id=lst.id)]))
    services.campaigns.send(campaign.id)

    def done() -> bool:
        progress = services.campaigns.get(campaign.id).progress
        status = services.messages.get(message.id).status
        return progress.total == 3 and progress.sent + progress.failed == 3 and status not in ("queued", "sending")

    wait_until(done, timeout=150, what="the SES worker's sends", log=log)
    assert services.messages.get(message.id).status == "sent", log.read_text()[-3000:]
    assert services.campaigns.get(campaign.id).progress.sent == 3
    made = recorded(path)
    assert_allowed(roles, "WorkerTaskRole", made, expect={"ses:GetAccount", "ses:SendEmail", "dynamodb:UpdateItem"})
    # the sends went through the configuration set the template creates
    assert any(c.resource.endswith(f":configuration-set/{CONFIGURATION_SET}") for c in made)
    assert json.loads(json.dumps([c.to_json() for c in made]))


@pytest.fixture
def smtp_server(stack: StackState, tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """`jetmail smtp-server` as template.yaml runs it: its certificate and key as PEM text (what ECS injects from
    the secret), recording its AWS calls."""
    from jetmail.messaging.smtp_server import self_signed

    cert, key = self_signed(str(tmp_path / "tls"))
    path, log, port = tmp_path / "smtp-calls.jsonl", tmp_path / "smtp.log", free_port()
    env = stack_env(stack, JETMAIL_SUBMISSION_CERT_PEM=Path(cert).read_text(),
                    JETMAIL_SUBMISSION_KEY_PEM=Path(key).read_text(),
                    PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    program = (f"import iamcheck; iamcheck.record({str(path)!r}); from jetmail.cli import main; "
               f"main(['smtp-server', '--host', '127.0.0.1', '--port', '{port}', '--tls-port', '0'])")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(tcp_ready(port), timeout=30, what="SMTP submission server", proc=proc, log=log)
        yield port, path, Path(cert)
    finally:
        stop_process(proc.pid)


def test_smtp_role_allows_a_submission(smtp_server: tuple[int, Path, Path], services: Services, api_token: str,
                                       roles: TemplateRoles, unique: str) -> None:
    import smtplib
    import ssl

    port, path, cert = smtp_server
    sender = f"app@{services.settings.default_from.rpartition('@')[2].rstrip('>')}"
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        client.login("app", api_token)
        client.sendmail(sender, [f"iam-smtp-{unique}@example.com"],
                        f"From: {sender}\r\nTo: iam-smtp-{unique}@example.com\r\nSubject: iam\r\n\r\nhello\r\n")
    assert_allowed(roles, "SmtpTaskRole", recorded(path), expect={"dynamodb:GetItem", "dynamodb:BatchWriteItem"})


def test_bounce_role_allows_a_report(lambda_env: None, services: Services, roles: TemplateRoles, calls: Path,
                                     monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    from jetmail.deliverability.bounces import BounceIntake, verp_address
    from jetmail.messaging.messages import MessageStatus, SendRequest, new_message_id

    # GIVEN a message jetmail sent over SMTP with its return path at the bounce domain
    monkeypatch.setenv("JETMAIL_BOUNCE_DOMAIN", "bounces.example.com")
    get_settings.cache_clear()
    intake = BounceIntake.from_services(Services(get_settings()))
    to, message_id = f"iam-bounce-{unique}@example.com", new_message_id()
    request = SendRequest.model_validate({"template": "password_reset", "to": to,
                                          "context": {"reset_url": "https://example.com/r", "expires_in_minutes": 5}})
    repo = services.messages.messages
    repo.create(repo.record(message_id, request=request, status=MessageStatus.SENT))
    verp = verp_address(message_id, signer=intake.signer, domain="bounces.example.com")
    assert verp
    # WHEN the bounce server (or the mailbox reader) takes its DSN
    dsn = (f"From: MAILER-DAEMON@mx.example.com\r\nTo: {verp}\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           "--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
           "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
           f"Final-Recipient: rfc822; {to}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n--b--\r\n").encode()
    outcome = intake.process(dsn, envelope_to=[verp])
    # THEN it was applied, with what BounceTaskRole allows
    assert outcome.message_id == message_id and outcome.kind != "forged", outcome
    assert_allowed(roles, "BounceTaskRole", recorded(calls), expect={"dynamodb:UpdateItem"})
