"""A complete transactional message (inline content, cc and bcc, custom headers, an attachment, metadata and
tags) costs the worker what a plain template send costs: two DynamoDB requests. Real stack of its own
(nats-server, moto server, a real worker process), so the request counts of its moto server are this
module's alone."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from stacktools import Isolated, emulator, settle


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("complete-lane"))
    own.start_worker()
    yield own
    own.close()


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def complete(to: str, unique: str) -> dict[str, Any]:
    return {"to": to, "subject": "Receipt {{ n }}", "html": "<p>Receipt {{ n }}</p><img src=\"cid:logo\">",
            "text": "Receipt {{ n }}", "context": {"n": unique}, "cc": [f"cc-{to}"], "bcc": [f"bcc-{to}"],
            "headers": {"X-Receipt": unique}, "metadata": {"receipt": unique}, "tags": ["receipt"],
            "attachments": [{"filename": "receipt.txt", "content": base64.b64encode(b"paid").decode(),
                             "content_type": "text/plain"},
                            {"filename": "logo.png", "content": base64.b64encode(b"\x89PNG").decode(),
                             "content_type": "image/png", "content_id": "logo"}]}


def status(client: TestClient, message_id: str) -> str:
    return str(client.get(f"/v1/messages/{message_id}").json()["status"])


def test_a_complete_message_costs_the_worker_two_dynamodb_requests(
        isolated: Isolated, client: TestClient, mailbox: Mailbox, unique: str) -> None:
    def moto_total() -> int:
        return sum(int(v) for v in emulator(str(isolated.settings.aws_endpoint_url), "requests").values())

    def worker_requests() -> int:
        return moto_total() - isolated.services.table.requests - isolated.services.stats_table.requests

    # GIVEN a worker that has sent one complete message already (its connections and caches warm)
    warm = client.post("/v1/messages", json=complete(f"warm-{unique}@example.com", unique)).json()
    wait_until(lambda: status(client, warm["id"]) == "sent", timeout=30, what="warm-up sent")
    before = settle(worker_requests)
    # WHEN one more is sent
    to = f"complete-{unique}@example.com"
    message = client.post("/v1/messages", json=complete(to, unique)).json()
    wait_until(lambda: status(client, message["id"]) == "sent", timeout=30, what="message sent")
    spent = settle(worker_requests) - before
    # THEN all three addresses got it, and the worker spent two requests: the claim and the outcome
    wait_until(lambda: len(mailbox.for_recipient(to)) == 1, timeout=10, what="delivered")
    assert {r.lower() for r in mailbox.for_recipient(to)[0].rcpt_tos} == {to, f"cc-{to}", f"bcc-{to}"}
    assert spent <= 2, f"the worker made {spent} DynamoDB requests for one complete message"
