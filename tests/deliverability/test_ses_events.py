"""SES notifications and events → DeliveryEvent, and the SNS-triggered Lambda handler end to end.

The samples are the files under events/ that `sam local invoke SesEventsFunction -e ...` takes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jetmail.config import get_settings
from jetmail.deliverability.events import DeliveryEvent, EventKind
from jetmail.deliverability.ses_events import ON_ACCOUNT_SUPPRESSION_LIST, SesEventError, parse_ses_message
from jetmail.messaging.messages import MessageStatus, SendRequest, new_message_id
from jetmail.services import Services

ROOT = Path(__file__).resolve().parents[2]
SES_MESSAGE_ID = "0100019ac5e7d1a4-3f6b2c1e-7a8d-4e5f-9b0c-1d2e3f4a5b6c-000000"
SAMPLES = sorted(p.name for p in (ROOT / "events").glob("ses_*.json"))

# sample → (kind, recipients); every sample is about jetmail message "msg_example"
EXPECTED: dict[str, tuple[EventKind, list[str]]] = {
    "ses_bounce_permanent.json": (EventKind.BOUNCE, ["ada@example.com"]),
    "ses_bounce_transient.json": (EventKind.BOUNCE, ["ada@example.com"]),
    "ses_bounce_multiple.json": (EventKind.BOUNCE, ["ada@example.com", "grace@example.org"]),
    "ses_complaint.json": (EventKind.COMPLAINT, ["ada@example.com"]),
    "ses_delivery.json": (EventKind.DELIVERY, ["ada@example.com"]),
    "ses_event_bounce_permanent.json": (EventKind.BOUNCE, ["ada@example.com"]),
    "ses_event_bounce_suppressed.json": (EventKind.BOUNCE, ["ada@example.com"]),
    "ses_event_click.json": (EventKind.CLICK, ["ada@example.com"]),
    "ses_event_complaint.json": (EventKind.COMPLAINT, ["ada@example.com"]),
    "ses_event_delivery.json": (EventKind.DELIVERY, ["ada@example.com"]),
    "ses_event_delivery_delay.json": (EventKind.DELIVERY_DELAY, ["ada@example.com"]),
    "ses_event_open.json": (EventKind.OPEN, ["ada@example.com"]),
    "ses_event_reject.json": (EventKind.REJECT, ["ada@example.com"]),
    "ses_event_rendering_failure.json": (EventKind.RENDERING_FAILURE, ["ada@example.com"]),
    "ses_event_send.json": (EventKind.SEND, ["ada@example.com"]),
    "ses_event_subscription.json": (EventKind.UNSUBSCRIBE, ["ada@example.com"]),
}


def event(name: str, **replace: str) -> dict[str, Any]:
    text = (ROOT / "events" / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def ses_json(name: str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(event(name)["Records"][0]["Sns"]["Message"])
    return message


def parsed(name: str) -> list[DeliveryEvent]:
    return [e for record in event(name)["Records"] for e in parse_ses_message(record["Sns"]["Message"])]


# ---------------------------------------------------------------- parsing

def test_every_sample_is_expected() -> None:
    assert set(SAMPLES) == set(EXPECTED)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_parses_to_its_kind_recipients_and_message(name: str) -> None:
    # GIVEN a sample SNS event WHEN its SES message is parsed
    events = parsed(name)
    # THEN one event per recipient, of the expected kind, attributed to jetmail's message
    kind, recipients = EXPECTED[name]
    assert [e.kind for e in events] == [kind] * len(recipients)
    assert [e.recipient for e in events] == recipients
    assert all(e.message_id == "msg_example" for e in events)
    assert all(e.provider_message_id == SES_MESSAGE_ID and e.source == "ses" for e in events)
    assert len({e.event_id for e in events}) == len(events)


def test_both_formats_are_read_and_give_the_same_event_ids() -> None:
    # the classic notification and the event-publishing record of one bounce, complaint and delivery
    for classic, published in [("ses_bounce_permanent.json", "ses_event_bounce_permanent.json"),
                               ("ses_complaint.json", "ses_event_complaint.json"),
                               ("ses_delivery.json", "ses_event_delivery.json")]:
        assert "notificationType" in ses_json(classic) and "eventType" in ses_json(published)
        assert [e.event_id for e in parsed(classic)] == [e.event_id for e in parsed(published)]


def test_bounce_details() -> None:
    [hard] = parsed("ses_bounce_permanent.json")
    assert (hard.bounce_type, hard.bounce_subtype) == ("Permanent", "General")
    assert hard.diagnostic is not None and "5.1.1" in hard.diagnostic
    assert hard.occurred_at.isoformat() == "2025-11-28T12:00:04.918000+00:00"
    [soft] = parsed("ses_bounce_transient.json")
    assert (soft.bounce_type, soft.bounce_subtype) == ("Transient", "MailboxFull")
    [suppressed] = parsed("ses_event_bounce_suppressed.json")
    assert suppressed.bounce_type == "Permanent" and suppressed.bounce_subtype == ON_ACCOUNT_SUPPRESSION_LIST


def test_multi_recipient_bounce_gives_one_event_per_recipient() -> None:
    ada, grace = parsed("ses_bounce_multiple.json")
    # "Grace Hopper <grace@example.org>" in the feedback becomes the bare, lower-cased address
    assert (ada.recipient, grace.recipient) == ("ada@example.com", "grace@example.org")
    assert ada.event_id != grace.event_id
    assert ada.diagnostic != grace.diagnostic


def test_complaint_open_click_and_other_details() -> None:
    [complaint] = parsed("ses_event_complaint.json")
    assert complaint.complaint_type == "abuse" and complaint.user_agent == "Mozilla/5.0 (ExampleCorp FBL)"
    [opened] = parsed("ses_event_open.json")
    assert opened.ip == "203.0.113.54" and opened.user_agent is not None and "iPhone" in opened.user_agent
    [click] = parsed("ses_event_click.json")
    assert click.link_url == "https://app.example.com/welcome?utm_source=jetmail" and click.ip == "203.0.113.54"
    assert click.user_agent is not None and "Safari" in click.user_agent
    [reject] = parsed("ses_event_reject.json")
    assert reject.diagnostic == "Bad content"
    [failure] = parsed("ses_event_rendering_failure.json")
    assert failure.diagnostic is not None and failure.diagnostic.startswith("welcome: ")
    [delay] = parsed("ses_event_delivery_delay.json")
    assert delay.diagnostic is not None and "TransientCommunicationFailure" in delay.diagnostic
    [delivery] = parsed("ses_delivery.json")
    assert delivery.diagnostic == "250 2.6.0 Message received"


def test_attribution_from_tags_header_and_campaign_tags() -> None:
    base = ses_json("ses_event_open.json")

    def message_id(tags: dict[str, list[str]], header: str | None) -> DeliveryEvent:
        data = json.loads(json.dumps(base))
        data["mail"]["tags"] = tags
        data["mail"]["headers"] = [h for h in data["mail"]["headers"] if h["name"] != "X-Jetmail-Message-Id"]
        if header is not None:
            data["mail"]["headers"].append({"name": "x-jetmail-message-id", "value": header})
        [e] = parse_ses_message(data)
        return e

    assert message_id({"message_id": ["msg_a"]}, None).message_id == "msg_a"
    assert message_id({"jetmail-message-id": ["msg_b"]}, None).message_id == "msg_b"
    assert message_id({}, "msg_c").message_id == "msg_c"
    assert message_id({}, None).message_id is None
    # SES tag values allow only [A-Za-z0-9_-]: the exact header value wins when it matches the tag
    assert message_id({"message_id": ["cm_cmp_1_r1_0_5"]}, "cm.cmp_1.r1.0.5").message_id == "cm.cmp_1.r1.0.5"
    # a header that does not match the tag does not override it
    assert message_id({"message_id": ["msg_d"]}, "msg_other").message_id == "msg_d"
    tagged = message_id({"message_id": ["msg_e"], "campaign_id": ["cmp_9"], "variant": ["b"]}, None)
    assert (tagged.campaign_id, tagged.variant) == ("cmp_9", "b")


def test_subscription_without_unsubscribe_all_is_a_subscription_event() -> None:
    data = ses_json("ses_event_subscription.json")
    data["subscription"]["newTopicPreferences"]["unsubscribeAll"] = False
    [e] = parse_ses_message(data)
    assert e.kind == EventKind.SUBSCRIPTION


def test_ses_destination_confirmation_is_no_event() -> None:
    assert parse_ses_message(json.dumps({
        "notificationType": "AmazonSnsSubscriptionSucceeded",
        "message": "You have successfully subscribed your Amazon SNS topic to receive 'Bounce' notifications."})) == []


def _bounce_without(field: str) -> dict[str, Any]:
    data = ses_json("ses_bounce_permanent.json")
    del data["bounce"][field]
    return data


@pytest.mark.parametrize("garbage", [
    "not json",
    "[1, 2]",
    json.dumps({"hello": "world"}),
    json.dumps({"eventType": "Teleport", "mail": {}}),
    json.dumps({"notificationType": "Bounce", "mail": ses_json("ses_bounce_permanent.json")["mail"]}),
    json.dumps({**ses_json("ses_bounce_permanent.json"), "mail": {"destination": []}}),
    json.dumps(_bounce_without("bouncedRecipients")),
    json.dumps({**ses_json("ses_bounce_permanent.json"),
                "bounce": {**ses_json("ses_bounce_permanent.json")["bounce"], "bounceType": "Sideways"}}),
    json.dumps({**ses_json("ses_event_open.json"), "mail": {**ses_json("ses_event_open.json")["mail"],
                                                            "destination": []}}),
])
def test_garbage_is_a_clear_error(garbage: str) -> None:
    with pytest.raises(SesEventError):
        parse_ses_message(garbage)


# ---------------------------------------------------------------- the Lambda handler, in-process

class LambdaContext:
    function_name = "jetmail-ses-events-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jetmail-ses-events-test"
    aws_request_id = "test-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def load_handler() -> ModuleType:
    """Load functions/ses_events/app.py the way the Lambda runtime does: by file, not as a package."""
    spec = importlib.util.spec_from_file_location("lambda_ses_events", ROOT / "functions" / "ses_events" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handler(app_env: dict[str, str], services: Services) -> Any:
    """The function loaded once for the module, as one warm container serves many invocations."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in app_env.items():
            if key.startswith(("JETMAIL_", "AWS_")):
                mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            return load_handler().handler
        finally:
            get_settings.cache_clear()


def sent_message(services: Services, to: str) -> str:
    """A message record in status sent (the worker is not needed to have one)."""
    message_id = new_message_id()
    repo = services.messages.messages
    services.table.put(repo.record(message_id, request=SendRequest(template="welcome", to=to),
                                   status=MessageStatus.SENT))
    return message_id


STATUS_AFTER = {"ses_bounce_permanent.json": "bounced", "ses_event_bounce_permanent.json": "bounced",
                "ses_complaint.json": "complained", "ses_event_complaint.json": "complained",
                "ses_delivery.json": "delivered", "ses_event_delivery.json": "delivered"}


@pytest.mark.parametrize("name", SAMPLES)
def test_handler_processes_each_sample_once(name: str, handler: Any, services: Services, unique: str) -> None:
    # GIVEN a sent message, and the sample event pointed at it and at a fresh recipient
    ada, grace = f"ada-{unique}@example.com", f"grace-{unique}@example.org"
    message_id = sent_message(services, ada)
    sample = event(name, **{"msg_example": message_id, "ada@example.com": ada, "grace@example.org": grace})
    expected = len(EXPECTED[name][1])
    # WHEN the function is invoked with it twice (SNS delivers at least once)
    first = handler(sample, LambdaContext())
    second = handler(sample, LambdaContext())
    # THEN the first applies every event, the second finds them all recorded already
    assert first == {"records": 1, "events": expected, "outcomes": {"applied": expected}, "invalid": 0,
                     "ignored": 0}, first
    assert second["outcomes"] == {"duplicate": expected}, second
    if name in STATUS_AFTER:
        assert services.messages.get(message_id).status == STATUS_AFTER[name]


def test_handler_skips_a_bad_record_without_blocking_the_others(handler: Any, services: Services,
                                                                 unique: str) -> None:
    # GIVEN one event with a good record, a garbage one, an unreadable one and a SubscriptionConfirmation
    to = f"mixed-{unique}@example.com"
    message_id = sent_message(services, to)
    good = event("ses_event_delivery.json", msg_example=message_id, **{"ada@example.com": to})["Records"][0]
    garbage = json.loads(json.dumps(good))
    garbage["Sns"]["Message"] = '{"eventType": "Teleport"}'
    no_sns = {"EventSource": "aws:sns", "EventVersion": "1.0"}
    confirmation = json.loads(json.dumps(good))
    confirmation["Sns"]["Type"] = "SubscriptionConfirmation"
    # WHEN the function gets them in one invocation
    summary = handler({"Records": [garbage, no_sns, good, confirmation]}, LambdaContext())
    # THEN the good record is applied, the others are counted and logged
    assert summary == {"records": 4, "events": 1, "outcomes": {"applied": 1}, "invalid": 2, "ignored": 1}
    assert services.messages.get(message_id).status == "delivered"
