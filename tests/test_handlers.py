"""Lambda handlers invoked in-process with the same events `sam local invoke -e events/...` passes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jetmail.config import get_settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services

ROOT = Path(__file__).resolve().parents[1]


class LambdaContext:
    function_name = "jetmail-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:jetmail-test"
    aws_request_id = "test-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def load_handler(function: str) -> ModuleType:
    """Load functions/<function>/app.py the way the Lambda runtime does: by file, not as a package."""
    spec = importlib.util.spec_from_file_location(f"lambda_{function}", ROOT / "functions" / function / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(name: str, **replace: str) -> dict[str, Any]:
    text = (ROOT / "events" / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@pytest.fixture
def lambda_env(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in app_env.items():
        if key.startswith(("JETMAIL_", "AWS_")):
            monkeypatch.setenv(key, value)
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
