"""A large audience planned by several plan jobs at once: each takes a range of the addresses, the runs' batch
numbers stay unique, everyone is mailed once, and the campaign counts every part. On a stack of its own, with a
worker that hands a part over after every 100 recipients."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from jetmail.campaigns.planner import split_point
from jetmail.campaigns.store import ROOT_PART
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import Isolated

CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    own = Isolated(stack, tmp_path_factory.mktemp("parts"))
    own.env.update({"JETMAIL_CAMPAIGN_PLAN_SPLIT_AFTER": "100", "JETMAIL_CAMPAIGN_PLAN_PARTS": "4"})
    own.start_worker()
    yield own
    own.close()


@pytest.fixture(scope="module")
def client(isolated: Isolated) -> Iterator[TestClient]:
    yield from isolated.client()


def make_list(client: TestClient, name: str, emails: list[str]) -> str:
    list_id = str(client.post("/v1/lists", json={"name": name}).json()["id"])
    body = "\n".join(json.dumps({"email": e}) for e in emails).encode()
    resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body)
    assert resp.status_code == 200 and resp.json()["failed"] == 0, resp.text
    return list_id


def test_split_points_fall_strictly_inside_the_range() -> None:
    assert split_point("", None) is not None
    for after, hi in [("alice@x.com", "bob@x.com"), ("c1999@b", "c2"), ("zz@x", None), ("a", "b")]:
        point = split_point(after, hi)
        assert point is not None and after < point and (hi is None or point < hi), (after, hi, point)
    # no room between two neighbours
    assert split_point("a", "a\x00") is None
    assert split_point("a", "a") is None


def test_a_campaign_planned_in_parts_mails_everyone_once(isolated: Isolated, client: TestClient, mailbox: Mailbox,
                                                         unique: str) -> None:
    services: Services = isolated.services
    # GIVEN a list of 780 addresses spread over the alphabet, and a second list sharing 60 of them
    domain = f"pp{unique}.example.com"
    everyone = [f"{letter}{i:02d}@{domain}" for letter in string.ascii_lowercase for i in range(30)]
    first = make_list(client, f"parts-{unique}", everyone)
    second = make_list(client, f"parts2-{unique}", everyone[::13] + [f"zz-extra{i}@{domain}" for i in range(5)])
    resp = client.post("/v1/campaigns", json={"name": f"parts-{unique}", "template": "getting_started",
                                              "context": CONTEXT,
                                              "audience": [{"list_id": first}, {"list_id": second}]})
    assert resp.status_code == 201, resp.text
    campaign_id = resp.json()["id"]
    # WHEN it is sent
    assert client.post(f"/v1/campaigns/{campaign_id}/send").json()["state"] == "sending"
    wanted = set(everyone) | {f"zz-extra{i}@{domain}" for i in range(5)}

    def mailed() -> dict[str, int]:
        return {r: n for r, n in mailbox.by_recipient().items() if r.endswith(domain)}

    wait_until(lambda: set(mailed()) >= wanted, timeout=180, what="everyone mailed")

    def sent() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(sent, timeout=120, what="campaign sent")
    # THEN everyone was mailed exactly once
    assert mailed() == dict.fromkeys(wanted, 1)
    # AND the run was planned by more than one part, each of a range of its own, all finished
    parts = services.campaign_store.plan_parts(campaign_id, run="main")
    assert len(parts) > 1 and all(p.done for p in parts)
    assert {p.id for p in parts if p.parent is None} == {ROOT_PART}
    assert len(parts) <= 4
    # AND the campaign counts every recipient and every batch once, under distinct numbers
    campaign = client.get(f"/v1/campaigns/{campaign_id}").json()
    assert campaign["progress"]["total"] == len(wanted) and campaign["progress"]["sent"] == len(wanted)
    batches = list(services.campaign_store.recorded_batches(campaign_id, run="main"))
    numbers = [b.number for page in batches for b in page]
    assert len(numbers) == len(set(numbers))
    assert sum(len(b.recipients) for page in batches for b in page) == len(wanted)
