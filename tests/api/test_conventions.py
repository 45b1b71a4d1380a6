"""The API's shared conventions, checked route by route: every list answers the ``Page`` envelope
``{"data": [...], "next_cursor": ...}``, and every error is an RFC 9457 ``application/problem+json`` body,
declared in the OpenAPI document and given by the real stack."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.devstack.stack import wait_until
from jetmail.services import Services

PROBLEMS = "https://jetmail.dev/problems/"
PROBLEM_KEYS = {"type", "title", "status", "detail"}
# every list route there is today; a new one is found by the walk below, these only guard the walk itself
KNOWN_LISTS = {"/v1/audit", "/v1/campaigns", "/v1/campaigns/{campaign_id}/failures", "/v1/lists",
               "/v1/lists/{list_id}/members", "/v1/segments", "/v1/sequences/definitions", "/v1/suppressions",
               "/v1/templates", "/v1/templates/{name}/versions"}


@pytest.fixture(scope="module")
def app(services: Services) -> FastAPI:
    return create_app(services.settings, services=services)


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture(scope="module")
def client(app: FastAPI, api_token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {api_token}"}) as c:
        yield c


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _is_list(op: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A route that answers many things: an array, anything with a cursor, or a route that pages."""
    params = {p["name"] for p in op.get("parameters", [])}
    props = schema.get("properties", {})
    return (schema.get("type") == "array" or "cursor" in params or "limit" in params
            or any("cursor" in name for name in props) or "data" in props)


def test_every_list_route_answers_the_page_envelope(spec: dict[str, Any]) -> None:
    # GIVEN every GET route of the OpenAPI document and the JSON schema of its 200
    lists: dict[str, dict[str, Any]] = {}
    for path, operations in spec["paths"].items():
        op = operations.get("get")
        media = (op or {}).get("responses", {}).get("200", {}).get("content", {}).get("application/json")
        if op is None or media is None or "schema" not in media:
            continue
        schema = _resolve(media["schema"], spec)
        if _is_list(op, schema):
            lists[path] = schema
    assert KNOWN_LISTS <= set(lists)
    # THEN each list is the envelope: exactly data (an array) and next_cursor (a string or null), both required
    for path, schema in lists.items():
        assert set(schema.get("properties", {})) == {"data", "next_cursor"}, path
        assert set(schema.get("required", [])) == {"data", "next_cursor"}, path
        assert schema["properties"]["data"]["type"] == "array", path
        assert {t.get("type") for t in schema["properties"]["next_cursor"]["anyOf"]} == {"string", "null"}, path


def test_every_error_response_is_declared_as_a_problem(spec: dict[str, Any]) -> None:
    # GIVEN the shared Problem schema
    problem = spec["components"]["schemas"]["Problem"]
    assert PROBLEM_KEYS <= set(problem["required"]) and "errors" in problem["properties"]
    # THEN every 4xx and 5xx of every route points at it as application/problem+json
    declared = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                if status[0] in "45":
                    # a public page's form post may also be answered with a page (text/html); the API never
                    allowed = {"application/problem+json"} | (set() if path.startswith("/v1/") else {"text/html"})
                    assert "application/problem+json" in response["content"], (method, path, status)
                    assert set(response["content"]) <= allowed, (method, path, status)
                    assert response["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"}, (method, path, status)
                    declared += 1
            if path.startswith("/v1/"):
                assert {"401", "403", "429", "500"} <= set(op["responses"]), (method, path)
                assert "Retry-After" in op["responses"]["429"]["headers"], (method, path)
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"], (method, path)
    assert declared > 100


def _problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json", resp.headers
    body: dict[str, Any] = resp.json()
    assert PROBLEM_KEYS <= set(body), body
    assert body["type"] == PROBLEMS + slug and body["status"] == status, body
    assert body["title"] and body["detail"], body
    return body


def test_errors_on_the_real_stack_are_problems(app: FastAPI, client: TestClient, services: Services,
                                               unique: str) -> None:
    # WHEN a route does not exist
    _problem(client.get("/v1/no-such-route"), 404, "not-found")
    # WHEN the key is missing: 401 with WWW-Authenticate
    with TestClient(app) as anonymous:
        missing = anonymous.get("/v1/templates")
    _problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    # WHEN a body is invalid: 422 naming each field
    bad = _problem(client.post("/v1/suppressions", json={"email": "x@example.com", "reason": "nope", "admin": True}),
                   422, "validation-error")
    assert {e["field"] for e in bad["errors"]} == {"reason", "admin"}
    assert all(e["message"] for e in bad["errors"])
    assert "reason" in bad["detail"] and "admin" in bad["detail"]
    # WHEN a resource the path names does not exist: the domain's own problem type
    missing_campaign = _problem(client.get("/v1/campaigns/cmp_nope"), 404, "campaign-not-found")
    assert missing_campaign["title"] == "Campaign not found" and "cmp_nope" in missing_campaign["detail"]
    # WHEN a cursor is not one the list gave: 422 from the domain, still with an errors array
    assert _problem(client.get("/v1/suppressions", params={"cursor": "bm9wZQ"}), 422, "invalid-cursor")["errors"] == []


def test_a_reused_idempotency_key_with_another_body_is_a_409_problem(client: TestClient, unique: str) -> None:
    # GIVEN a message sent with an Idempotency-Key
    body = {"template": "password_reset", "to": f"idem-{unique}@example.com",
            "context": {"reset_url": "https://example.com/r/1", "expires_in_minutes": 30}}
    headers = {"Idempotency-Key": f"conventions-{unique}"}
    first = client.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == 202, first.text
    # WHEN the same key comes again with the same body: the same message, replayed
    again = client.post("/v1/messages", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # WHEN it comes with a different body: 409, nothing sent
    other = client.post("/v1/messages", json={**body, "to": f"other-{unique}@example.com"}, headers=headers)
    assert "different request body" in _problem(other, 409, "idempotency-conflict")["detail"]


def test_a_body_over_the_limit_is_a_413_problem(services: Services, api_token: str) -> None:
    small = services.settings.model_copy(update={"max_body_bytes": 1024})
    with TestClient(create_app(small, services=services), headers={"Authorization": f"Bearer {api_token}"}) as c:
        resp = c.post("/v1/suppressions", content=b'{"email": "' + b"x" * 2000 + b'"}',
                      headers={"Content-Type": "application/json"})
    assert "1024 bytes" in _problem(resp, 413, "body-too-large")["detail"]


def test_a_key_over_its_limit_gets_a_429_problem_with_retry_after(app: FastAPI, services: Services,
                                                                  unique: str) -> None:
    # GIVEN a key limited to 1 request a minute, early enough in the minute to stay in it
    _, token = services.api_keys.create(f"conventions-{unique}", scopes=["send"], rate_per_minute=1)
    wait_until(lambda: time.time() % 60 < 40, timeout=30, what="room in the minute")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as limited:
        assert limited.get("/v1/messages/none").status_code == 404
        # WHEN it calls again
        resp = limited.get("/v1/messages/none")
    # THEN a 429 problem with Retry-After
    assert "1 requests per minute" in _problem(resp, 429, "rate-limited")["detail"]
    assert 1 <= int(resp.headers["retry-after"]) <= 60


def test_a_list_route_answers_the_envelope(client: TestClient, unique: str) -> None:
    # GIVEN a list  WHEN the lists and its members are read  THEN both are pages
    created = client.post("/v1/lists", json={"name": f"conventions-{unique}"}).json()
    lists = client.get("/v1/lists").json()
    assert set(lists) == {"data", "next_cursor"} and lists["next_cursor"] is None
    assert created["id"] in [lst["id"] for lst in lists["data"]]
    assert client.get(f"/v1/lists/{created['id']}/members").json() == {"data": [], "next_cursor": None}
