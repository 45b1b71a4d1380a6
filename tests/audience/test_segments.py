"""Segments: criteria validation, every operator, engagement, list scoping, preview and lazy evaluation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.audience.contacts import ContactStore
from jetmail.audience.model import ContactUpsert
from jetmail.audience.segments import SegmentCreate, SegmentNotFound, SegmentStore, parse_criteria
from jetmail.config import Settings
from jetmail.services import Services
from jetmail.storage.table import Table
from stacktools import api_client


@pytest.fixture(scope="module")
def client(services: Services, api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


@dataclass
class People:
    run: str
    list_id: str
    other_list_id: str

    def address(self, who: str) -> str:
        return f"{who}-{self.run}@example.com"


NOW = datetime.now(UTC)
PEOPLE: dict[str, dict[str, Any]] = {
    "ada": {"name": "Ada Lovelace", "language": "en", "timezone": "Europe/London",
            "attributes": {"plan": "pro", "score": 90, "signup": "2024-01-15", "tags": ["beta", "vip"],
                           "company": {"size": 500}}},
    "bob": {"name": "Bob Stone", "language": "de", "timezone": "Europe/Berlin",
            "attributes": {"plan": "free", "score": 40, "signup": "2025-06-01", "tags": ["beta"],
                           "company": {"size": 5}}},
    "cy": {"name": "Cy", "language": "de-AT", "attributes": {"plan": "pro", "score": 55.5,
                                                           "signup": "2023-03-01T10:00:00Z"}},
    "dee": {"language": "fr", "attributes": {"vip": True}},
    "eve": {"name": "Eve", "attributes": {"plan": "pro", "score": 99}},  # unsubscribed from the main list
}
OPENED = {"ada": NOW - timedelta(days=2), "bob": NOW - timedelta(days=40), "eve": NOW - timedelta(days=1)}
CLICKED = {"ada": NOW - timedelta(days=1), "bob": NOW - timedelta(days=30)}


@pytest.fixture(scope="module")
def people(services: Services) -> People:
    run = uuid.uuid4().hex[:10]
    store = services.contacts
    main, other = store.create_list(f"seg-main-{run}"), store.create_list(f"seg-other-{run}")
    group = People(run=run, list_id=main.id, other_list_id=other.id)
    for who, profile in PEOPLE.items():
        status = "unsubscribed" if who == "eve" else "subscribed"
        lists = {main.id: status, **({other.id: "subscribed"} if who in ("cy", "dee") else {})}
        body = {**profile, "attributes": {**profile["attributes"], "run": run}, "lists": lists}
        store.upsert(group.address(who), ContactUpsert.model_validate(body))
    store.upsert(group.address("finn"), ContactUpsert.model_validate(
        {"name": "Finn", "attributes": {"plan": "pro", "run": run}, "lists": {other.id: "subscribed"}}))
    for who, at in OPENED.items():
        assert store.record_engagement(group.address(who), "open", at)
    for who, at in CLICKED.items():
        assert store.record_engagement(group.address(who), "click", at)
    return group


def members(services: Services, people: People, criteria: dict[str, Any], *,
            list_ids: list[str] | None = None) -> set[str]:
    scope = [people.list_id] if list_ids is None else list_ids
    found = [m.email for m in services.segments.matching(parse_criteria(criteria), scope)]
    assert len(found) == len(set(found)), "a member came twice"
    return {email.split("-")[0] for email in found}


def cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


OPERATOR_CASES = [
    (cond("attributes.plan", "eq", "pro"), {"ada", "cy"}),
    (cond("attributes.plan", "ne", "pro"), {"bob", "dee"}),  # a missing attribute is "not equal"
    (cond("attributes.plan", "in", ["free", "team"]), {"bob"}),
    (cond("attributes.plan", "not_in", ["pro"]), {"bob", "dee"}),
    (cond("name", "contains", "LOVE"), {"ada"}),
    (cond("attributes.tags", "contains", "vip"), {"ada"}),
    (cond("attributes.tags", "in", ["vip", "nope"]), {"ada"}),
    (cond("attributes.score", "gt", 55.5), {"ada"}),
    (cond("attributes.score", "gte", 55.5), {"ada", "cy"}),
    (cond("attributes.score", "lt", 55.5), {"bob"}),
    (cond("attributes.score", "lte", 40), {"bob"}),
    (cond("attributes.signup", "gt", "2024-01-01"), {"ada", "bob"}),
    (cond("attributes.signup", "lt", "2024-01-01T00:00:00+00:00"), {"cy"}),
    (cond("attributes.company.size", "exists", True), {"ada", "bob"}),
    (cond("attributes.company.size", "gte", 100), {"ada"}),
    (cond("timezone", "exists", False), {"cy", "dee"}),
    (cond("email", "eq", "ADA-{run}@Example.com"), {"ada"}),
    (cond("language", "eq", "de"), {"bob"}),
    (cond("timezone", "eq", "Europe/Berlin"), {"bob"}),
    (cond("attributes.vip", "eq", True), {"dee"}),
    (cond("attributes.vip", "eq", 1), set()),  # a boolean only equals a boolean
    (cond("attributes.plan", "gt", 3), set()),  # text is never greater than a number
]


@pytest.mark.parametrize(("criteria", "expected"), OPERATOR_CASES,
                         ids=[f"{c['field']}-{c['op']}" for c, _ in OPERATOR_CASES])
def test_each_operator(services: Services, people: People, criteria: dict[str, Any], expected: set[str]) -> None:
    if isinstance(criteria["value"], str):
        criteria = {**criteria, "value": criteria["value"].format(run=people.run)}
    assert members(services, people, criteria) == expected


def test_and_or_not(services: Services, people: People) -> None:
    pro = cond("attributes.plan", "eq", "pro")
    english = cond("language", "eq", "en")
    assert members(services, people, {"and": [pro, {"not": english}]}) == {"cy"}
    assert members(services, people, {"or": [cond("language", "eq", "fr"), cond("attributes.score", "gt", 80)]}) == {
        "ada", "dee"}
    assert members(services, people, {"not": {"or": [pro, english]}}) == {"bob", "dee"}
    assert members(services, people, {"not": {"not": pro}}) == {"ada", "cy"}


ENGAGEMENT_CASES = [
    ({"opened_within_days": 7}, {"ada"}),
    ({"opened_within_days": 60}, {"ada", "bob"}),
    ({"clicked_within_days": 7}, {"ada"}),
    ({"clicked_within_days": 31}, {"ada", "bob"}),
    ({"never_opened": True}, {"cy", "dee"}),
    ({"never_opened": False}, {"ada", "bob"}),
    # decided by the snapshot for dee, by engagement for ada
    ({"or": [{"opened_within_days": 7}, cond("language", "eq", "fr")]}, {"ada", "dee"}),
    ({"and": [cond("attributes.plan", "eq", "pro"), {"not": {"never_opened": True}}]}, {"ada"}),
]


@pytest.mark.parametrize(("criteria", "expected"), ENGAGEMENT_CASES, ids=[json.dumps(c) for c, _ in ENGAGEMENT_CASES])
def test_engagement_conditions_on_a_list(services: Services, people: People, criteria: dict[str, Any],
                                         expected: set[str]) -> None:
    # members are judged on their snapshot; engagement is read only where that cannot decide
    assert members(services, people, criteria) == expected


def test_list_scoping(services: Services, people: People) -> None:
    pro = cond("attributes.plan", "eq", "pro")
    # only subscribed members of the named lists, each once however many of the lists they are in
    assert members(services, people, pro, list_ids=[people.other_list_id]) == {"cy", "finn"}
    assert members(services, people, pro, list_ids=[people.list_id, people.other_list_id]) == {"ada", "cy", "finn"}


def test_without_lists_a_segment_ranges_over_all_contacts(services: Services, people: People) -> None:
    # unsubscribed (eve) and other-list (finn) contacts included; engagement comes with the contact items
    # (one pass over every contact in the shared test table, so one test covers it)
    criteria = {"and": [cond("attributes.run", "eq", people.run),
                        {"or": [{"opened_within_days": 7}, {"never_opened": True}]}]}
    assert members(services, people, criteria, list_ids=[]) == {"ada", "eve", "cy", "dee", "finn"}


BAD_CRITERIA = [
    ({"field": "attributes.plan", "op": "equals", "value": "pro"}, "criteria.op", "unknown op 'equals'"),
    ({"and": [{"field": "name", "op": "eq"}]}, "criteria.and[0].value", "Field required"),
    ({"or": [{"field": "attributes.score", "op": "gt", "value": "lots"}]}, "criteria.or[0].value",
     "gt needs a number or an ISO 8601 date"),
    ({"field": "name", "op": "in", "value": "Ada"}, "criteria.value", "in needs a non-empty list"),
    ({"field": "name", "op": "exists", "value": "yes"}, "criteria.value", "exists needs true or false"),
    ({"field": "phone", "op": "eq", "value": "1"}, "criteria.field", "unknown field 'phone'"),
    ({"not": {"colour": "red"}}, "criteria.not", "expected a condition"),
    ({"opened_within_days": 0}, "criteria.opened_within_days", "greater than or equal to 1"),
    ({"field": "name", "op": "eq", "value": "x", "extra": 1}, "criteria.extra", "unknown key"),
    ({"and": [{"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"never_opened": True}}}}}}}}}]},
     "criteria.and[0].not.not.not.not.not.not.not", "nested too deeply"),
    ({"or": [cond("name", "eq", str(n)) for n in range(300)]}, "criteria", "too many conditions"),
]


@pytest.mark.parametrize(("criteria", "path", "reason"), BAD_CRITERIA, ids=[r for _, _, r in BAD_CRITERIA])
def test_bad_criteria_answer_422_with_path_and_reason(client: TestClient, criteria: dict[str, Any], path: str,
                                                      reason: str) -> None:
    resp = client.post("/v1/segments", json={"name": "bad", "criteria": criteria})
    assert resp.status_code == 422, resp.text
    [problem] = resp.json()["errors"]
    assert problem["field"] == "criteria"
    assert problem["message"].startswith(f"{path}: ")
    assert reason in problem["message"]


def test_segment_api_lifecycle_and_preview(client: TestClient, people: People) -> None:
    body = {"name": "pro in main", "list_ids": [people.list_id],
            "criteria": {"and": [cond("attributes.plan", "eq", "pro"), {"never_opened": True}]}}
    created = client.post("/v1/segments", json=body)
    assert created.status_code == 201, created.text
    segment = created.json()
    assert segment["criteria"] == body["criteria"]
    assert client.get(f"/v1/segments/{segment['id']}").json() == segment
    assert segment["id"] in [s["id"] for s in client.get("/v1/segments").json()["data"]]
    # WHEN previewed THEN the count and a sample of members with what sending needs
    preview = client.post(f"/v1/segments/{segment['id']}/preview").json()
    assert preview["count"] == 1
    assert preview["sample"] == [{"email": people.address("cy"), "name": "Cy", "language": "de-AT", "timezone": None,
                                  "attributes": {**PEOPLE["cy"]["attributes"], "run": people.run}}]
    broad = client.post("/v1/segments", json={"name": "all of main", "list_ids": [people.list_id],
                                              "criteria": cond("email", "exists", True)}).json()
    assert client.post(f"/v1/segments/{broad['id']}/preview").json()["count"] == 4
    # unknown lists are refused; a deleted segment is gone
    unknown = client.post("/v1/segments", json={**body, "list_ids": ["lst_0000000000000000"]})
    assert unknown.status_code == 422
    assert client.delete(f"/v1/segments/{segment['id']}").status_code == 204
    assert client.get(f"/v1/segments/{segment['id']}").status_code == 404
    assert client.delete(f"/v1/segments/{segment['id']}").status_code == 404
    assert client.post(f"/v1/segments/{segment['id']}/preview").status_code == 404


def test_iter_members_reads_pages_on_demand(settings: Settings, table: Table, unique: str) -> None:
    counted = Table(settings)  # its own request counter; the table fixture made the table
    contacts = ContactStore(counted)
    segments = SegmentStore(counted, contacts=contacts)
    target = contacts.create_list(f"lazy-seg-{unique}")
    body = "\n".join(json.dumps({"email": f"z{n:03d}-{unique}@example.com", "attributes": {"n": n}})
                     for n in range(120)).encode()
    contacts.import_members([body], list_id=target.id, fmt="jsonl")
    for n in range(0, 120, 3):
        contacts.record_engagement(f"z{n:03d}-{unique}@example.com", "open", NOW - timedelta(hours=n))
    even = segments.create(SegmentCreate(name="even", list_ids=[target.id], criteria={"or": [
        cond("attributes.n", "in", [0, 2, 4, 6, 8]), cond("attributes.n", "gte", 10)]}))
    engaged = segments.create(SegmentCreate(name="engaged", list_ids=[target.id],
                                            criteria={"opened_within_days": 30}))

    # WHEN a snapshot-only segment is iterated in pages of 50
    before = counted.requests
    found = segments.iter_members(even.id, page_size=50)
    assert counted.requests - before == 1  # the segment's GetItem; no page read yet
    assert len(list(islice(found, 5))) == 5
    assert counted.requests - before == 2  # one Query
    assert len(list(found)) == 110
    assert counted.requests - before == 4  # pages of 50, 50, 20
    # WHEN the criteria need engagement THEN each page adds one BatchGetItem (<= 100 contacts)
    before = counted.requests
    assert len(list(segments.iter_members(engaged.id, page_size=50))) == 40
    assert counted.requests - before == 1 + 3 + 3
    with pytest.raises(SegmentNotFound):
        segments.iter_members("seg_0000000000000000")
