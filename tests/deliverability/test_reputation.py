"""The reputation monitor acts once per threshold, and an operator's resume clears it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.aws.clients import aws_client
from jetmail.campaigns.model import BatchCounts
from jetmail.deliverability.reputation import count_sent
from jetmail.devstack.stack import StackState
from jetmail.scheduler import tick
from stacktools import Isolated

ALERTS_TOPIC = "arn:aws:sns:us-east-1:123456789012:jetmail-alerts"


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # the monitor stops marketing for the whole account: it gets an account of its own
    own = Isolated(stack, tmp_path_factory.mktemp("reputation"), alerts_topic_arn=ALERTS_TOPIC)
    sns, sqs = aws_client("sns", own.settings), aws_client("sqs", own.settings)
    assert sns.create_topic(Name="jetmail-alerts")["TopicArn"] == ALERTS_TOPIC
    queue_url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=ALERTS_TOPIC, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true"})
    own.alerts_inbox = queue_url  # type: ignore[attr-defined]
    yield own
    own.close()


def alerts(own: Isolated) -> list[str]:
    """What reached the alerts topic's subscriber since the last call."""
    sqs = aws_client("sqs", own.settings)
    got = sqs.receive_message(QueueUrl=own.alerts_inbox, MaxNumberOfMessages=10)  # type: ignore[attr-defined]
    for message in got.get("Messages", []):
        sqs.delete_message(QueueUrl=own.alerts_inbox, ReceiptHandle=message["ReceiptHandle"])  # type: ignore[attr-defined]
    return [m["Body"] for m in got.get("Messages", [])]


def add_events(own: Isolated, **counts: int) -> None:
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H")
    names = {f"#c{i}": name for i, name in enumerate(counts)}
    own.services.stats_table.update("STATS", f"HOUR#{hour}",
                                    expression="ADD " + ", ".join(f"#c{i} :v{i}" for i in range(len(counts))),
                                    names=names, params={f":v{i}": v for i, v in enumerate(counts.values())})


def test_each_threshold_acts_once_and_resume_clears(isolated: Isolated) -> None:
    services = isolated.services
    client = TestClient(create_app(isolated.settings, services=services),
                        headers={"Authorization": f"Bearer {isolated.token}"})
    list_id = client.post("/v1/lists", json={"name": "rep"}).json()["id"]
    client.put("/v1/contacts/a@example.com", json={"lists": {list_id: "subscribed"}})
    campaign = client.post("/v1/campaigns", json={
        "name": "running", "template": "getting_started", "audience": [{"list_id": list_id}],
        "context": {"steps": [], "dashboard_url": "https://a.example.com/", "docs_url": "https://d.example.com/"},
    }).json()["id"]
    client.post(f"/v1/campaigns/{campaign}/send")  # no worker here: it stays "sending"
    services.queue.run(lambda q: count_sent(q.js, 1000))
    # GIVEN too few sends nothing happens; 1000 sends with 6 % hard bounces halve the rate, once
    add_events(isolated, bounced_hard=60, delivered=990)
    assert tick(services)["reputation_actions"] == ["rate_halved"]
    # AND the operators hear of it once, through the alerts topic
    first_alerts = alerts(isolated)
    assert len(first_alerts) == 1 and "rate_halved" in first_alerts[0] and "bounce 6.00%" in first_alerts[0]
    assert tick(services)["reputation_actions"] == []
    assert alerts(isolated) == []
    # complaints over 0.1 % pause running campaigns, once
    add_events(isolated, complained=2)
    assert tick(services)["reputation_actions"] == ["campaigns_paused"]
    assert client.get(f"/v1/campaigns/{campaign}").json()["state"] == "paused"
    assert tick(services)["reputation_actions"] == []
    # bounces over 10 % stop all marketing until an operator resumes
    add_events(isolated, bounced_hard=50)
    assert tick(services)["reputation_actions"] == ["marketing_stopped"]
    assert any("marketing_stopped" in body for body in alerts(isolated))
    status = client.get("/v1/sending/status").json()
    assert status["marketing_stopped"] is True and status["reputation"]["sent"] == 1000
    assert abs(status["reputation"]["bounce_rate"] - 0.11) < 1e-9
    # delivery under 95 % enqueues one list review
    add_events(isolated, bounced_hard=0)
    resumed = client.post("/v1/sending/resume").json()
    assert {"campaigns_paused", "marketing_stopped", "rate_halved"} <= set(resumed["cleared"])
    assert client.get("/v1/sending/status").json()["marketing_stopped"] is False


def test_low_delivery_rate_enqueues_one_list_review(isolated: Isolated) -> None:
    services = isolated.services
    before = services.queue.pending("email_maintenance")
    services.queue.run(lambda q: count_sent(q.js, 2000))
    add_events(isolated, delivered=100)  # 1,090 delivered of 3,000 sent
    actions = tick(services)["reputation_actions"]
    assert "list_review" in actions
    assert "list_review" not in tick(services)["reputation_actions"]
    after = services.queue.pending("email_maintenance")
    assert sum(after.values()) == sum(before.values()) + 1


def test_a_campaign_past_the_thresholds_is_paused_on_its_own(isolated: Isolated) -> None:
    services = isolated.services
    client = TestClient(create_app(isolated.settings, services=services),
                        headers={"Authorization": f"Bearer {isolated.token}"})
    list_id = client.post("/v1/lists", json={"name": "rep-campaign"}).json()["id"]
    campaign = client.post("/v1/campaigns", json={
        "name": "bouncy", "template": "getting_started", "audience": [{"list_id": list_id}],
        "context": {"steps": [], "dashboard_url": "https://a.example.com/", "docs_url": "https://d.example.com/"},
    }).json()["id"]
    client.post(f"/v1/campaigns/{campaign}/send")
    # GIVEN 600 of its sends recorded and 80 hard bounces (13 %) while the account looks healthy
    services.campaign_store.finish_batch(campaign, run="main", batch=1, counts=BatchCounts(sent=600))
    services.stats_table.update(f"CAMPAIGN#{campaign}", "TOTALS", expression="ADD bounced_hard :n",
                                params={":n": 80})
    result = tick(services)
    assert "campaign_paused" in result["reputation_actions"]
    assert client.get(f"/v1/campaigns/{campaign}").json()["state"] == "paused"
    assert "campaign_paused" not in tick(services)["reputation_actions"]
