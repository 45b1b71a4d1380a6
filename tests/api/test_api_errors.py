"""An exception no handler knows: a fixed problem+json 500 with the security headers every other answer carries,
the exception's text and stack trace in the log only."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.config import Settings
from jetmail.services import Services

LEAK = "db password is hunter2"


def app_with_failing_routes(settings: Settings, services: Services) -> FastAPI:
    app = create_app(settings, services=services)

    @app.get("/v1/boom", include_in_schema=False)
    def boom() -> dict[str, str]:
        raise RuntimeError(LEAK)

    @app.get("/boom-async", include_in_schema=False)
    async def boom_async() -> dict[str, str]:
        raise KeyError(LEAK)

    return app


@pytest.fixture(scope="module")
def failing_app(settings: Settings, services: Services) -> FastAPI:
    return app_with_failing_routes(settings, services)


def test_an_unexpected_exception_is_a_problem_500_with_the_security_headers(
        failing_app: FastAPI, api_token: str, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN routes that raise exceptions no handler maps  WHEN they are called over plain HTTP
    with caplog.at_level(logging.ERROR, logger="jetmail.api"), \
            TestClient(failing_app, headers={"Authorization": f"Bearer {api_token}"}) as client:
        answers = {"/v1/boom": client.get("/v1/boom"), "/boom-async": client.get("/boom-async")}
    for path, resp in answers.items():
        # THEN each is a 500 with the fixed problem body, nothing of the exception in it
        assert resp.status_code == 500, path
        assert resp.headers["content-type"] == "application/problem+json", path
        assert resp.json() == {"type": "https://jetmail.dev/problems/internal", "title": "Internal Server Error",
                               "status": 500, "detail": "internal error"}, path
        assert "hunter2" not in resp.text and "Traceback" not in resp.text, path
        # AND it carries the security headers
        assert resp.headers["x-content-type-options"] == "nosniff", path
        assert "strict-transport-security" not in resp.headers, path
    assert answers["/v1/boom"].headers["cache-control"] == "no-store"
    assert "cache-control" not in answers["/boom-async"].headers
    # AND the log has each failure once, with its stack trace, for the operator
    logged = [r for r in caplog.records if r.getMessage().startswith("unhandled error on ")]
    assert sorted(r.getMessage() for r in logged) == ["unhandled error on GET /boom-async",
                                                      "unhandled error on GET /v1/boom"]
    assert all(r.exc_info and LEAK in str(r.exc_info[1]) for r in logged)


def test_a_500_over_https_has_hsts(failing_app: FastAPI, api_token: str) -> None:
    # GIVEN the request came over HTTPS (directly, or behind a proxy that says so)
    with TestClient(failing_app, headers={"Authorization": f"Bearer {api_token}"},
                    base_url="https://testserver") as secure, \
            TestClient(failing_app, headers={"Authorization": f"Bearer {api_token}"}) as plain:
        direct = secure.get("/v1/boom")
        proxied = plain.get("/v1/boom", headers={"X-Forwarded-Proto": "https"})
    # THEN the 500 has HSTS like every other answer
    for resp in (direct, proxied):
        assert resp.status_code == 500
        assert resp.headers["strict-transport-security"].startswith("max-age=")
        assert resp.headers["cache-control"] == "no-store"


def test_mapped_errors_are_still_answered_by_their_handlers(failing_app: FastAPI, api_token: str) -> None:
    # GIVEN the catch-all for unexpected exceptions  WHEN a route raises a domain error or the path is unknown
    with TestClient(failing_app, headers={"Authorization": f"Bearer {api_token}"}) as client:
        missing_message = client.get("/v1/messages/none")
        unknown_path = client.get("/v1/no-such-route")
    # THEN they keep their own 4xx answers
    assert missing_message.status_code == 404
    assert missing_message.json()["type"] == "https://jetmail.dev/problems/message-not-found"
    assert unknown_path.status_code == 404 and unknown_path.json()["type"] == "https://jetmail.dev/problems/not-found"


def test_a_500_to_an_allowed_origin_carries_the_cors_headers(settings: Settings, services: Services,
                                                            api_token: str) -> None:
    # GIVEN an API that allows one browser origin
    allowed = settings.model_copy(update={"cors_origins": ["https://app.example.com"]})
    app = app_with_failing_routes(allowed, services)
    with TestClient(app, headers={"Authorization": f"Bearer {api_token}"}) as client:
        # WHEN a request from that origin, and one from another, meet an unexpected error
        ours = client.get("/v1/boom", headers={"Origin": "https://app.example.com"})
        theirs = client.get("/v1/boom", headers={"Origin": "https://evil.example.net"})
    # THEN both are the JSON 500 with the security headers, and only the allowed origin may read it
    for resp in (ours, theirs):
        assert resp.status_code == 500 and resp.json()["type"] == "https://jetmail.dev/problems/internal"
        assert resp.headers["x-content-type-options"] == "nosniff"
    assert ours.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in theirs.headers


def test_every_mapped_exception_path_names_an_exception_class() -> None:
    # GIVEN the status table, keyed by class path so that building the app imports no domain module
    import importlib

    from jetmail.api.errors import STATUS_FOR, status_for

    for path, status in STATUS_FOR.items():
        module, _, name = path.rpartition(".")
        # THEN each path names an exception class where it says, and an instance of it gets its status
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception), path
        assert status_for(cls.__new__(cls)) == status, path
