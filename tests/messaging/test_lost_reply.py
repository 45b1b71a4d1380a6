"""A create whose reply DynamoDB never sent: the SDK repeats a write that already happened, and
``POST /v1/messages`` must still answer 202 and send the message once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from stacktools import Isolated, moto_faults

RESET = {"reset_url": "https://example.com/r/token", "expires_in_minutes": 30}


@pytest.fixture(scope="module")
def iso(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # its own moto, so the injected fault hits this module's request and nobody else's; a 1 s read
    # timeout so the SDK gives up on the held reply (and repeats the write) quickly
    own = Isolated(stack, tmp_path_factory.mktemp("lost-reply"), aws_read_timeout_s=1.0)
    own.start_worker()
    yield own
    own.close()


@pytest.mark.parametrize("idempotency_key", [None, "order-7"], ids=["plain", "idempotency-key"])
def test_a_create_repeated_after_a_lost_reply_is_accepted_and_sent_once(
        iso: Isolated, mailbox: Mailbox, unique: str, idempotency_key: str | None) -> None:
    # GIVEN the next DynamoDB write (the idempotency claim's PutItem, else the message's TransactWriteItems) is
    # applied but its reply is held past the SDK's read timeout
    to = f"lost-{unique}-{'k' if idempotency_key else 'p'}@example.com"
    moto = str(iso.settings.aws_endpoint_url)
    client = TestClient(create_app(iso.settings, services=iso.services),
                        headers={"Authorization": f"Bearer {iso.token}"})
    moto_faults(moto, {"share": 1, "errors": ["lost_reply"], "operations": ["PutItem", "TransactWriteItems"],
                       "stall_seconds": 1.5, "limit": 1})
    # WHEN a message is submitted
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    try:
        resp = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET},
                           headers=headers)
        injected = moto_faults(moto)["injected"]
    finally:
        moto_faults(moto, {"share": 0})
    # THEN the SDK did repeat an applied write, and the API still accepted the message as new
    assert injected == {"lost_reply": 1}
    assert resp.status_code == 202, resp.text
    assert "Idempotent-Replayed" not in resp.headers
    message_id = resp.json()["id"]
    # AND it is sent, exactly once
    wait_until(lambda: client.get(f"/v1/messages/{message_id}").json()["status"] == "sent", timeout=60,
               what="message sent")
    assert mailbox.by_recipient()[to] == 1
    if idempotency_key:
        again = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET},
                            headers=headers)
        assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == message_id
