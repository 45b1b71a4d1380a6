"""Lambda handlers invoked in-process with the same events `sam local invoke -e events/...` passes."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetmail.config import get_settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from lambdas import LambdaContext, event, load_handler

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lambda_env(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in app_env.items():
        if key.startswith(("JETMAIL_", "AWS_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")  # no X-Ray daemon here
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_api_handler_twice_in_a_warm_container(lambda_env: None, services: Services, api_token: str,
                                               email_worker: subprocess.Popen[bytes], mailbox: Mailbox,
                                               unique: str) -> None:
    # GIVEN the API function loaded once (a cold start)
    handler = load_handler("api").handler
    to = f"lambda-{unique}@example.com"
    sent = event("api_send_message.json", **{"REPLACE_WITH_API_KEY": api_token, "ada@example.com": to,
                                             "signup-ada-2025-11-28": f"signup-{unique}"})
    # WHEN it is invoked twice in a row with the same API Gateway event (a client retry, warm)
    first = handler(sent, LambdaContext())
    second = handler(sent, LambdaContext())
    # THEN both answers are 202 with one message id, and one email arrives
    assert first["statusCode"] == second["statusCode"] == 202, first
    assert json.loads(first["body"])["id"] == json.loads(second["body"])["id"]
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="lambda-sent mail")
    # and a third, different invocation on the same warm container works too
    message_id = json.loads(first["body"])["id"]
    got = handler(event("api_get_message.json", **{"REPLACE_WITH_API_KEY": api_token,
                                                   "msg_example": message_id}), LambdaContext())
    assert got["statusCode"] == 200 and json.loads(got["body"])["id"] == message_id
    health = handler(event("api_health.json"), LambdaContext())
    assert health["statusCode"] == 200


def test_api_handler_refuses_the_sample_event_without_a_real_key(lambda_env: None, services: Services) -> None:
    handler = load_handler("api").handler
    resp = handler(event("api_send_message.json"), LambdaContext())
    assert resp["statusCode"] == 401


def test_scheduler_handler_runs_the_tick_for_the_sample_event(lambda_env: None, services: Services) -> None:
    # GIVEN a campaign due in the past that nothing has started yet
    from datetime import UTC, datetime, timedelta

    from jetmail.campaigns.model import AudienceSource, CampaignCreate, ScheduleRequest

    lst = services.contacts.create_list("handler-tick")
    campaign = services.campaigns.create(CampaignCreate(name="due", template="welcome",
                                                        context={"login_url": "https://app.example.com/login"},
                                                        audience=[AudienceSource(list_id=lst.id)]))
    services.campaigns.schedule(campaign.id, ScheduleRequest(at=datetime.now(UTC) + timedelta(hours=1)))
    # WHEN EventBridge's tick arrives (its time two hours ahead), twice in a row on a warm container
    handler = load_handler("scheduler").handler
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tick_event = event("scheduler_tick.json")
    tick_event["time"] = later
    first = handler(tick_event, LambdaContext())
    second = handler(tick_event, LambdaContext())
    # THEN the campaign was started once
    assert campaign.id in first["started"] and campaign.id not in second["started"]
    # (an empty audience may already have finished by the time we look)
    assert services.campaigns.get(campaign.id).state in ("sending", "sent")


def tracking_tokens(mailbox: Mailbox, to: str) -> tuple[str, str, str]:
    """The open, click and unsubscribe tokens of the one mail ``to`` received, as a reader's client sees them."""
    entry = mailbox.for_recipient(to)[0]
    msg = mailbox.message(entry.id)
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    click = re.findall(r'href="[^"]*/t/c/([^"]+)"', html)[0]
    pixel = re.findall(r'src="[^"]*/t/o/([^"]+)"', html)[0]
    unsubscribe = str(msg["List-Unsubscribe"]).strip("<>").rsplit("/u/", 1)[1]
    return pixel, click, unsubscribe


def test_api_handler_serves_contacts_templates_and_campaigns_from_the_sample_events(
        lambda_env: None, services: Services, api_token: str, email_worker: subprocess.Popen[bytes],
        mailbox: Mailbox, unique: str) -> None:
    # GIVEN the API function, a real key in place of the samples' placeholder, and a list of our own
    handler = load_handler("api").handler
    key = {"REPLACE_WITH_API_KEY": api_token}
    lst = services.contacts.create_list(f"handler-{unique}")
    to = f"contact-{unique}@example.com"
    # WHEN a contact is upserted into the list, the templates listed, a campaign created and sent
    upsert = handler(event("api_upsert_contact.json", **key, **{"ada@example.com": to,
                                                                "REPLACE_WITH_LIST_ID": lst.id}), LambdaContext())
    templates = handler(event("api_list_templates.json", **key), LambdaContext())
    created = handler(event("api_create_campaign.json", **key, REPLACE_WITH_LIST_ID=lst.id), LambdaContext())
    assert created["statusCode"] == 201, created
    campaign_id = json.loads(created["body"])["id"]
    sent = handler(event("api_send_campaign.json", **key, REPLACE_WITH_CAMPAIGN_ID=campaign_id), LambdaContext())
    # THEN each answers as the API does over HTTP (a new contact is a 201), and the campaign mails the contact once
    assert upsert["statusCode"] == 201, upsert
    assert json.loads(upsert["body"])["lists"] == {lst.id: "subscribed"}
    assert templates["statusCode"] == 200
    assert "getting_started" in {t["name"] for t in json.loads(templates["body"])["data"]}
    assert sent["statusCode"] == 200 and json.loads(sent["body"])["state"] == "sending", sent
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=30, what="campaign mail from the sample")
    # and the sample with an unknown campaign id is a 404, not a 500
    missing = handler(event("api_send_campaign.json", **key), LambdaContext())
    assert missing["statusCode"] == 404


def test_api_handler_tracks_opens_clicks_and_one_click_unsubscribe_from_the_sample_events(
        lambda_env: None, services: Services, api_token: str, email_worker: subprocess.Popen[bytes],
        mailbox: Mailbox, unique: str) -> None:
    # GIVEN a message sent through the API function and received by its reader
    handler = load_handler("api").handler
    to = f"tracked-{unique}@example.com"
    accepted = handler(event("api_send_message.json", **{"REPLACE_WITH_API_KEY": api_token, "ada@example.com": to,
                                                         "signup-ada-2025-11-28": f"track-{unique}"}),
                       LambdaContext())
    message_id = json.loads(accepted["body"])["id"]
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=15, what="tracked mail")
    pixel, click, unsubscribe = tracking_tokens(mailbox, to)
    # WHEN the reader's client loads the pixel, follows the link and the mailbox provider posts a one-click unsubscribe
    opened = handler(event("api_track_open.json", REPLACE_WITH_OPEN_TOKEN=pixel), LambdaContext())
    clicked = handler(event("api_track_click.json", REPLACE_WITH_CLICK_TOKEN=click), LambdaContext())
    gone = handler(event("api_unsubscribe_one_click.json", REPLACE_WITH_UNSUBSCRIBE_TOKEN=unsubscribe),
                   LambdaContext())
    # THEN the pixel is a GIF, the click a redirect to the link's target, the unsubscribe a bare 200
    assert opened["statusCode"] == 200 and opened["headers"]["content-type"] == "image/gif"
    assert clicked["statusCode"] == 302 and clicked["headers"]["location"] == "https://app.example.com/login"
    assert gone["statusCode"] == 200 and gone["body"] == ""
    # and the events and the suppression are recorded
    kinds = {item["sk"].split("#")[0] for item in services.stats_table.query_all(pk=f"EVT#{message_id}")}
    assert {"open", "click"} <= kinds
    suppression = services.suppressions.get(to)
    assert suppression is not None and suppression.reason == "unsubscribed"
    # and the samples' placeholder tokens are refused with a 404
    assert handler(event("api_track_click.json"), LambdaContext())["statusCode"] == 404


def test_ses_events_handler_logs_json_with_the_sns_message_id_and_prints_emf(
        lambda_env: None, services: Services, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the SES events function, its Powertools log handler writing into a buffer we can read
    handler = load_handler("ses_events").handler
    log_handler = logging.getLogger("jetmail").powertools_handler  # type: ignore[attr-defined]
    buffer = io.StringIO()
    previous = log_handler.setStream(buffer)
    sample = event("ses_bounce_permanent.json", **{"ada@example.com": f"bounce-{unique}@example.com"})
    try:
        # WHEN SNS delivers the sample bounce
        summary = handler(sample, LambdaContext())
    finally:
        log_handler.setStream(previous)
    # THEN every log line is JSON carrying the service, the Lambda request id and the SNS message id
    assert summary["events"] == 1
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    intake = [line for line in lines if line["message"].startswith("SES events:")]
    assert intake, lines
    assert all(line["service"] == "jetmail" for line in lines)
    assert all(line["correlation_id"] == sample["Records"][0]["Sns"]["MessageId"] for line in lines)
    assert intake[0]["function_request_id"] == LambdaContext.aws_request_id
    # and the invocation's metrics came out as one EMF record with a Bounces count
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    bounces = [record for record in emf if "Bounces" in record]
    assert bounces and bounces[0]["Bounces"] == [1.0]
    directive = bounces[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "jetmail" and {"Name": "Bounces", "Unit": "Count"} in directive["Metrics"]
