"""The API's route modules load on the first request under their paths (jetmail.api.app.JetmailApi): a cold start
loads only what its request needs, and every route still answers, in the order an eagerly built app matches."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from jetmail.api.app import DASHBOARD_PATH, ROUTE_PATHS, JetmailApi, create_app
from jetmail.aws.snapstart import prepare
from jetmail.services import Services
from lambdas import ROOT

DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _paths(routes: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    return [(str(route.path), tuple(sorted(route.methods or ()))) for route in iter_route_contexts(routes)]


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


@pytest.mark.parametrize("name", [*ROUTE_PATHS, "dashboard"])
def test_every_route_of_a_module_lies_under_the_prefixes_it_is_loaded_for(name: str) -> None:
    # GIVEN a route module and the path prefixes the app loads it for
    module = "jetmail.dashboard" if name == "dashboard" else f"jetmail.api.{name}"
    prefixes = (DASHBOARD_PATH,) if name == "dashboard" else ROUTE_PATHS[name]
    router: APIRouter = importlib.import_module(module).router
    # THEN each of its routes is under one of them (a route outside would still answer, through the fallback
    # that loads every module, but a cold start would pay for all of them)
    paths = [path for path, _ in _paths(router.routes)]
    assert paths
    outside = [path for path in paths if not _under(path, prefixes)]
    assert outside == [], f"{module}: add these routes' prefix to ROUTE_PATHS"


def test_a_cold_start_loads_no_route_module_and_no_aws_or_nats_client() -> None:
    # GIVEN a fresh interpreter with the API function's environment  WHEN it loads the handler by file
    script = ("import importlib.util, json, sys\n"
              "spec = importlib.util.spec_from_file_location('handler', sys.argv[1])\n"
              "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
              "print(json.dumps(sorted(sys.modules)))\n")
    env = {"PATH": "/usr/bin:/bin", "AWS_LAMBDA_FUNCTION_NAME": "jetmail-test", "AWS_REGION": "us-east-1",
           "JETMAIL_TABLE_NAME": "jetmail-test", "JETMAIL_NATS_URL": "nats://127.0.0.1:1",
           "JETMAIL_SIGNING_SECRET": "test-signing-secret-0123456789abcdef", "JETMAIL_PROVIDER": "ses",
           "JETMAIL_DEFAULT_FROM": "Test <test@example.com>", "JETMAIL_PUBLIC_BASE_URL": "https://mail.example.com",
           "JETMAIL_COMPANY_NAME": "Test", "JETMAIL_COMPANY_ADDRESS": "1 Test Road",
           "POWERTOOLS_TRACE_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "functions" / "api" / "app.py")], env=env,
                          capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    # THEN no route module, nor what they need (boto3, nats, Jinja, httpx, pydantic v1), has been imported
    # (Powertools imports the botocore package for its user agent; its sessions and clients stay unloaded)
    routes = {f"jetmail.api.{name}" for name in ROUTE_PATHS} | {"jetmail.dashboard"}
    assert loaded & routes == set()
    assert loaded & {"boto3", "botocore.session", "botocore.client", "nats", "jinja2", "httpx", "pydantic.v1",
                     "cryptography"} == set()


def test_every_route_answers_on_a_cold_app_in_any_order_and_keeps_the_eager_order(services: Services) -> None:
    # GIVEN the routes of an app with every module included, and a cold app (nothing included yet)
    eager = create_app(services.settings, services=services)
    eager.include_all()
    expected = _paths(eager.router.routes)
    cold = create_app(services.settings, services=services)
    assert len(cold.pending) == len(ROUTE_PATHS) + 1  # the dashboard too
    # WHEN each route is called without a key, last module's routes first
    with TestClient(cold, base_url="https://testserver", follow_redirects=False) as client:
        for path, methods in reversed(expected):
            if path in DOCS or path.startswith(DASHBOARD_PATH):
                continue
            method = next(m for m in methods if m != "HEAD")
            answer = client.request(method, re.sub(r"\{[^}]+\}", "x", path), json={})
            # THEN it reached its route: every /v1 route asks for a key (an unknown path would be a 404)
            assert not path.startswith("/v1/") or answer.status_code == 401, (method, path, answer.status_code)
        # and the public routes answer too
        assert client.post("/sns/ses", content=b"{}").status_code == 400
        # the open pixel's own 404 for a bad token ("not found"), not the one of a path no route has ("Not Found")
        assert client.get("/t/o/x").json()["detail"] == "not found"
        assert client.get("/p/x").headers["content-type"].startswith("text/html")  # the public pages' 404 page
        assert client.get(DASHBOARD_PATH + "/login").status_code == 200
    # THEN every module is included, and the routes are matched in the order of the eager app
    assert cold.pending == ()
    assert _paths(cold.router.routes) == expected


def test_a_request_loads_only_the_modules_under_its_path(services: Services) -> None:
    # GIVEN a cold app  WHEN /v1/messages and then /v1/stats are asked for
    app = create_app(services.settings, services=services)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert len(app.pending) == len(ROUTE_PATHS) + 1
        assert client.get("/v1/messages/x").status_code == 401
        assert client.get("/v1/stats").status_code == 401
    # THEN only those two modules are included; /v1/campaigns/... would load both campaigns and reports
    assert {"jetmail.api.messages:router", "jetmail.api.reports:router"}.isdisjoint(app.pending)
    assert len(app.pending) == len(ROUTE_PATHS) + 1 - 2


def test_a_path_no_route_has_includes_every_module_and_is_a_404(services: Services) -> None:
    # GIVEN a cold app  WHEN a path under no module's prefix is asked for
    app = create_app(services.settings, services=services)
    with TestClient(app) as client:
        answer = client.get("/v2/nothing")
    # THEN every module was tried before answering 404, so a route missing from ROUTE_PATHS still answers
    assert answer.status_code == 404
    assert app.pending == ()


def test_the_openapi_document_of_a_cold_app_lists_every_route(services: Services) -> None:
    # GIVEN a cold app and one with every module included
    eager = create_app(services.settings, services=services)
    eager.include_all()
    cold = create_app(services.settings, services=services)
    # WHEN the cold app's document is built (/openapi.json)
    with TestClient(cold) as client:
        spec = client.get("/openapi.json").json()
    # THEN it is the eager app's document, every route module's paths in it
    assert spec == eager.openapi()
    for name in ROUTE_PATHS:
        router: APIRouter = importlib.import_module(f"jetmail.api.{name}").router
        public = {str(route.path) for route in iter_route_contexts(router.routes) if route.include_in_schema}
        assert public <= set(spec["paths"]), name  # pages (tracking, unsubscribe, archive) are left out
    assert len(spec["paths"]) > 40


def test_a_snapstart_snapshot_includes_every_route_module(services: Services) -> None:
    # GIVEN the API function's app, cold
    app: JetmailApi = create_app(services.settings, services=services)
    # WHEN SnapStart prepares the snapshot as functions/api/app.py asks it to
    prepare(services, calls=(app.include_all,))
    # THEN nothing is left for the first request after a restore to load
    assert app.pending == ()
