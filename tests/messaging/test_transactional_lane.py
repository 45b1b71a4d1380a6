"""The transactional lane: what one message costs the worker in DynamoDB requests, and that the checks it no
longer reads from DynamoDB still hold (suppression at submit and at send time, a saved template taking
effect). Real stack of its own (nats-server, moto server, a real worker process), so the request counts of
its moto server are this module's alone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, stop_process, wait_until
from jetmail.messaging.messages import SEND_TASK, TRANSACTIONAL_QUEUE
from jetmail.messaging.templating import TemplateContent
from stacktools import Isolated, emulator, settle

RESET = {"reset_url": "https://example.com/r/lane-token", "expires_in_minutes": 30}
# the worker keeps template heads (and the webhook endpoint list) this long in the tests that measure a send:
# the warm-up's reads stay valid
LONG_CACHE_S = "120"
SHORT_CACHE_S = "1"


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("lane"), template_cache_s=float(SHORT_CACHE_S))
    own.env["JETMAIL_TEMPLATE_CACHE_S"] = LONG_CACHE_S
    # the webhook endpoint list too (one Query per refresh, whatever the traffic): the warm-up reads it
    own.env["JETMAIL_WEBHOOK_CACHE_S"] = LONG_CACHE_S
    own.start_worker()
    yield own
    own.close()


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def worker_with(isolated: Isolated, *, template_cache_s: str) -> None:
    """A running worker whose template cache lasts ``template_cache_s`` (restarted when it differs)."""
    if isolated.worker is not None and isolated.worker.poll() is None \
            and isolated.env.get("JETMAIL_TEMPLATE_CACHE_S") == template_cache_s:
        return
    if isolated.worker is not None:
        stop_process(isolated.worker.pid)
    isolated.env["JETMAIL_TEMPLATE_CACHE_S"] = template_cache_s
    isolated.start_worker()


def send(client: TestClient, to: str, *, template: str = "password_reset", **extra: Any) -> dict[str, Any]:
    resp = client.post("/v1/messages", json={"template": template, "to": to, "context": RESET, **extra})
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def status(client: TestClient, message_id: str) -> str:
    return str(client.get(f"/v1/messages/{message_id}").json()["status"])


def sent_once(client: TestClient, mailbox: Mailbox, message_id: str, to: str) -> None:
    """Wait until the message is ``sent``, then check it reached the sink once."""
    wait_until(lambda: status(client, message_id) == "sent", timeout=60, what="sent")
    assert len(mailbox.for_recipient(to)) == 1


def moto_requests(isolated: Isolated) -> dict[str, int]:
    """DynamoDB requests the module's moto server has answered, by operation."""
    return {k: int(v) for k, v in emulator(str(isolated.settings.aws_endpoint_url), "requests").items()}


def own_requests(isolated: Isolated) -> int:
    """DynamoDB requests this test process made (the API's submit, the status polls)."""
    return isolated.services.table.requests + isolated.services.stats_table.requests


def test_a_transactional_send_costs_the_worker_at_most_two_dynamodb_requests(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a worker that has sent one message (its template head is read once, then cached)
    worker_with(isolated, template_cache_s=LONG_CACHE_S)
    warm = send(client, f"warm-{unique}@example.com")
    wait_until(lambda: status(client, warm["id"]) == "sent", timeout=30, what="warm-up sent")

    def worker_requests() -> int:
        return sum(moto_requests(isolated).values()) - own_requests(isolated)

    settle(worker_requests)
    before, by_operation = worker_requests(), moto_requests(isolated)
    # WHEN one more password reset is sent
    to = f"lane-{unique}@example.com"
    message = send(client, to)
    wait_until(lambda: status(client, message["id"]) == "sent", timeout=30, what="message sent")
    spent = settle(worker_requests) - before
    # THEN it reached the sink, and the worker spent at most two requests on it: the claim and the outcome
    assert len(mailbox.for_recipient(to)) == 1
    after = moto_requests(isolated)
    made = {op: n - by_operation.get(op, 0) for op, n in after.items() if n != by_operation.get(op, 0)}
    assert spent <= 2, f"the worker made {spent} DynamoDB requests for one message (all requests meanwhile: {made})"
    # AND its status moved once, and its send was counted (the mark that keeps it counted once)
    shown = client.get(f"/v1/messages/{message['id']}").json()
    assert [h["status"] for h in shown["history"]] == ["queued", "sending", "sent"]
    assert shown["attempts"] == 1 and shown["provider"]
    assert isolated.services.stats_table.get(f"SENT#msg:{message['id']}", "SENT") is not None


def test_a_recipient_suppressed_at_submit_is_refused_at_once(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a suppressed address
    to = f"gone-{unique}@example.com"
    assert client.post("/v1/suppressions", json={"email": to, "reason": "hard_bounce"}).status_code == 201
    # WHEN a password reset is sent to it
    message = send(client, to)
    # THEN the answer already says suppressed, and why
    assert message["status"] == "suppressed"
    assert message["history"][-1]["detail"] == "suppressed: hard_bounce"
    # AND no job was published for it: publishing its job id now is not a duplicate of an earlier one
    probe = isolated.services.queue.enqueue(SEND_TASK, queue=TRANSACTIONAL_QUEUE, priority="high",
                                            job_id=message["id"], message_id=message["id"])
    assert not probe.duplicate
    # AND that late job finds the message final: no attempt, nothing mailed
    wait_until(lambda: sum(isolated.services.queue.run(lambda q: q.pending(TRANSACTIONAL_QUEUE)).values()) == 0,
               timeout=30, what="the probe job handled")
    shown = client.get(f"/v1/messages/{message['id']}").json()
    assert (shown["status"], shown["attempts"]) == ("suppressed", 0)
    assert mailbox.for_recipient(to) == []


class Calls:
    """The DynamoDB calls this process's services make, with the parameters they are given."""

    def __init__(self, isolated: Isolated) -> None:
        self.events = isolated.services.table.client.meta.events
        self.made: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> Calls:
        self.events.register("provide-client-params.dynamodb.*", self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        self.events.unregister("provide-client-params.dynamodb.*", self._note)

    def _note(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.made.append((model.name, params))

    def touching(self, prefix: str) -> list[str]:
        """The operations (a transaction's actions by kind) that name a key whose pk starts with ``prefix``."""
        found = []
        for name, params in self.made:
            if name == "TransactWriteItems":
                found += [f"{name}.{kind}" for action in params["TransactItems"] for kind, op in action.items()
                          if names_key(op, prefix)]
            elif names_key(params, prefix):
                found.append(name)
        return found


def names_key(value: Any, prefix: str) -> bool:
    """Whether a request's parameters hold a key or item whose pk starts with ``prefix`` anywhere."""
    if isinstance(value, dict):
        pk = value.get("pk")
        if isinstance(pk, dict) and str(pk.get("S", "")).startswith(prefix):
            return True
        return any(names_key(v, prefix) for v in value.values())
    if isinstance(value, list):
        return any(names_key(v, prefix) for v in value)
    return False


def test_a_reset_is_checked_against_the_suppression_list_inside_its_own_write(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN an address on no suppression list
    worker_with(isolated, template_cache_s=LONG_CACHE_S)
    to = f"clean-{unique}@example.com"
    # WHEN a password reset is sent to it
    with Calls(isolated) as calls:
        message = send(client, to)
    # THEN the API read no suppression entry: the checks that the address and its erased pseudonym have none
    # were part of the message's one transaction
    assert calls.touching("SUPP#") == ["TransactWriteItems.ConditionCheck"] * 2, calls.touching("SUPP#")
    assert message["status"] == "queued"
    sent_once(client, mailbox, message["id"], to)


def test_an_address_unsubscribed_from_marketing_still_gets_its_reset(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN an address on the suppression list for an unsubscribe, which stops marketing mail only
    worker_with(isolated, template_cache_s=LONG_CACHE_S)
    to = f"unsub-{unique}@example.com"
    assert client.post("/v1/suppressions", json={"email": to, "reason": "unsubscribed"}).status_code == 201
    # WHEN a password reset is sent to it
    with Calls(isolated) as calls:
        message = send(client, to)
    # THEN the entry failed the write's check, was read, and did not refuse the reset: it is queued and sent
    assert "TransactWriteItems.ConditionCheck" in calls.touching("SUPP#")
    assert {"BatchGetItem", "GetItem"} & set(calls.touching("SUPP#"))
    assert message["status"] == "queued"
    sent_once(client, mailbox, message["id"], to)
    assert [h["status"] for h in client.get(f"/v1/messages/{message['id']}").json()["history"]] \
        == ["queued", "sending", "sent"]


def test_a_scheduled_message_whose_recipient_is_suppressed_after_submit_is_not_sent(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a password reset scheduled for a few seconds from now
    worker_with(isolated, template_cache_s=LONG_CACHE_S)
    to = f"later-{unique}@example.com"
    message = send(client, to, send_at=(datetime.now(UTC) + timedelta(seconds=6)).isoformat())
    assert message["status"] == "scheduled"
    # WHEN its recipient is suppressed for a complaint before it is due (through the store alone: the API
    # would also cancel the pending message, so the worker's check would never be asked)
    isolated.services.suppressions.add(to, reason="spam_complaint", source="test")
    # THEN the worker refuses it at send time, from the stop event, and nothing reaches the sink
    wait_until(lambda: status(client, message["id"]) == "suppressed", timeout=60, what="suppressed at send time")
    shown = client.get(f"/v1/messages/{message['id']}").json()
    assert shown["history"][-1]["detail"] == "suppressed: spam_complaint"
    assert mailbox.for_recipient(to) == []


def test_a_worker_started_after_the_suppression_honours_it(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN no worker running, and a password reset scheduled for a moment later
    assert isolated.worker is not None
    stop_process(isolated.worker.pid)
    to = f"restart-{unique}@example.com"
    message = send(client, to, send_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat())
    # WHEN its recipient is suppressed, and only then a worker starts (after the message fell due)
    isolated.services.suppressions.add(to, reason="manual", source="test")
    isolated.start_worker()
    # THEN it ends suppressed, never mailed
    wait_until(lambda: status(client, message["id"]) == "suppressed", timeout=60, what="suppressed at send time")
    assert mailbox.for_recipient(to) == []


def test_a_suppression_lifted_before_the_send_lets_the_message_go(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a scheduled message whose recipient is suppressed after submit
    worker_with(isolated, template_cache_s=LONG_CACHE_S)
    to = f"lifted-{unique}@example.com"
    message = send(client, to, send_at=(datetime.now(UTC) + timedelta(seconds=6)).isoformat())
    isolated.services.suppressions.add(to, reason="manual", source="test")
    # WHEN the suppression is lifted before the message is due
    assert isolated.services.suppressions.remove(to)
    # THEN the latest word on the address counts: it is sent
    sent_once(client, mailbox, message["id"], to)


def test_a_saved_template_takes_effect_after_the_cache_time(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # GIVEN a worker whose template cache lasts a second, and a template it has already sent
    worker_with(isolated, template_cache_s=SHORT_CACHE_S)
    name = f"lane_{unique}"

    def save(subject: str) -> None:
        isolated.services.templates.save(TemplateContent(name=name, locale="en", subject=subject,
                                                         html="<p>Hello.</p>", text="Hello."))

    def subject_of(to: str) -> str:
        entries = mailbox.for_recipient(to)
        return str(mailbox.message(entries[0].id)["Subject"]) if entries else ""

    save(f"first {unique}")
    first = f"first-{unique}@example.com"
    send(client, first, template=name)
    wait_until(lambda: subject_of(first) == f"first {unique}", timeout=30, what="the first version sent")
    # WHEN a new version is saved (by this process, not the worker's)
    save(f"second {unique}")
    # THEN messages sent after the worker's cache time carry it
    sent: list[str] = []

    def new_version_sent() -> bool:
        to = f"next{len(sent)}-{unique}@example.com"
        sent.append(to)
        send(client, to, template=name)
        wait_until(lambda: subject_of(to) != "", timeout=30, what=f"message to {to}")
        return subject_of(to) == f"second {unique}"

    wait_until(new_version_sent, timeout=60, what="the saved version in use")
