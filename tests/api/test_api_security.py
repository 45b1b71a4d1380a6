"""API hardening: scopes on every route, key rotation and revocation, the per-key request limit, body size
limits, strict request models, CORS, security headers, and no secret in any log line."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Response
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr

from jetmail.api.app import create_app
from jetmail.api.auth import authenticate
from jetmail.compliance.apikeys import KeyNotFound
from jetmail.config import Settings
from jetmail.devstack.stack import StackState, free_port, wait_until
from jetmail.services import Services
from stacktools import Isolated, make_settings

PUBLIC = {"/health", "/t/o/{token}", "/t/c/{token}", "/u/{token}", "/sns/ses",
          "/subscribe/{public_id}", "/confirm/{token}"}
# the preference centre, view in browser and the campaign archive (jetmail.api.pages)
PUBLIC |= {"/p/{token}", "/v/{token}", "/archive/{public_id}", "/archive/{public_id}/feed.atom",
           "/archive/{public_id}/{campaign_id}"}
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
DASHBOARD = "/dashboard"
# what a `send` key may call: transactional mail and sequence enrolments, nothing that manages the account
SEND_ROUTES = {("POST", "/v1/messages"), ("POST", "/v1/messages/batch"), ("GET", "/v1/messages/{message_id}"),
               ("POST", "/v1/sequences"),
               ("DELETE", "/v1/sequences"), ("GET", "/v1/sequences/definitions"),
               ("GET", "/v1/sequences/{enrolment_id}"), ("DELETE", "/v1/sequences/{enrolment_id}")}


def _routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    out = []
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                out.append((method, str(route.path), getattr(route, "dependant", None)))
    return out


def _calls(dependant: Any) -> list[Callable[..., Any]]:
    found: list[Callable[..., Any]] = []
    for dep in dependant.dependencies if dependant is not None else ():
        found.append(dep.call)
        found.extend(_calls(dep))
    return found


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.fixture(scope="module")
def app(services: Services) -> FastAPI:
    return create_app(services.settings, services=services)


def _client(app: FastAPI, token: str | None = None, **kwargs: Any) -> TestClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(app, headers=headers, **kwargs)


# ---------------------------------------------------------------- scopes


def test_every_v1_route_needs_a_key_and_a_send_key_reaches_only_the_send_routes(app: FastAPI,
                                                                                services: Services) -> None:
    # GIVEN every route of the app and a key with only the `send` scope
    routes = _routes(app)
    _, send_token = services.api_keys.create("scope-walk", scopes=["send"])
    # the dashboard's pages have a login of their own
    paths = {path for _, path, _ in routes if not path.startswith(DASHBOARD)}
    # THEN only the documented public routes and the docs are outside /v1, and every /v1 route authenticates
    assert paths - {p for p in paths if p.startswith("/v1/")} == PUBLIC | DOCS
    for method, path, dependant in routes:
        if path.startswith(DASHBOARD):
            continue
        if path.startswith("/v1/"):
            assert authenticate in _calls(dependant), f"{method} {path} takes no API key"
        else:
            assert authenticate not in _calls(dependant), f"{method} {path} is public but asks for a key"
    assert SEND_ROUTES <= {(m, p) for m, p, _ in routes}
    # WHEN the send key (and no key at all) calls each /v1 route
    with _client(app, send_token) as sender, _client(app) as anonymous:
        for method, path, _ in routes:
            if not path.startswith("/v1/"):
                continue
            anonymous_status = anonymous.request(method, _fill(path), json={}).status_code
            status = sender.request(method, _fill(path), json={}).status_code
            # THEN no key is 401 everywhere; the send key is refused (403) on everything but the send routes
            assert anonymous_status == 401, (method, path)
            if (method, path) in SEND_ROUTES:
                assert status not in (401, 403), (method, path, status)
            else:
                assert status == 403, (method, path, status)


# ---------------------------------------------------------------- rotation and revocation


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(app: FastAPI, services: Services,
                                                                 unique: str) -> None:
    # GIVEN a send key with its own limit
    keys = services.api_keys
    key, first = keys.create(f"rotate-{unique}", scopes=["send"], rate_per_minute=50)
    # WHEN it is rotated with an hour of grace
    rotated, second = keys.rotate(key.key_id, grace=timedelta(hours=1))
    # THEN id, name, scopes and limit stay, and both secrets work
    assert (rotated.key_id, rotated.name, rotated.scopes, rotated.rate_per_minute) == (
        key.key_id, key.name, ["send"], 50)
    assert second != first and second.startswith(f"jm_{key.key_id}_")
    with _client(app, first) as old, _client(app, second) as new:
        assert old.get("/v1/messages/none").status_code == 404
        assert new.get("/v1/messages/none").status_code == 404
        # WHEN it is rotated again without grace
        _, third = keys.rotate(key.key_id)
        # THEN both earlier secrets stop at once and only the newest works
        assert old.get("/v1/messages/none").status_code == 401
        assert new.get("/v1/messages/none").status_code == 401
    with _client(app, third) as newest:
        assert newest.get("/v1/messages/none").status_code == 404


def test_old_secret_stops_when_the_grace_period_ends(app: FastAPI, services: Services, unique: str) -> None:
    # GIVEN a key rotated with two seconds of grace
    key, old_token = services.api_keys.create(f"grace-{unique}", scopes=["send"])
    _, new_token = services.api_keys.rotate(key.key_id, grace=timedelta(seconds=2))
    with _client(app, old_token) as old, _client(app, new_token) as new:
        assert old.get("/v1/messages/none").status_code == 404
        # WHEN the grace period passes  THEN the old secret gets 401 and the new one still works
        wait_until(lambda: old.get("/v1/messages/none").status_code == 401, timeout=30, what="grace to end")
        assert new.get("/v1/messages/none").status_code == 404


def test_revocation_takes_effect_on_the_next_request(app: FastAPI, services: Services, unique: str) -> None:
    # GIVEN a working admin key
    key, token = services.api_keys.create(f"revoke-{unique}", scopes=["admin"])
    with _client(app, token) as client:
        assert client.get("/v1/templates").status_code == 200
        # WHEN it is revoked  THEN the very next request is refused, and it cannot be rotated back to life
        assert services.api_keys.revoke(key.key_id)
        refused = client.get("/v1/templates")
        assert refused.status_code == 401 and refused.json()["type"] == "https://jetmail.dev/problems/unauthorized"
    with pytest.raises(KeyNotFound):
        services.api_keys.rotate(key.key_id)


def test_keys_rotate_command_prints_the_new_key_once(services: Services, app: FastAPI, app_env: dict[str, str],
                                                     unique: str) -> None:
    # GIVEN a key
    key, old_token = services.api_keys.create(f"cli-{unique}", scopes=["send"])
    # WHEN `jetmail keys rotate KEY_ID --grace 24h` runs
    done = subprocess.run([sys.executable, "-m", "jetmail.cli", "keys", "rotate", key.key_id, "--grace", "24h"],
                          env=app_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    new_token = done.stdout.strip().splitlines()[-1]
    # THEN the last line is the new key, and both it and the old one work for the grace period
    assert new_token.startswith(f"jm_{key.key_id}_") and new_token != old_token
    assert "1 day" in done.stdout
    for token in (old_token, new_token):
        with _client(app, token) as client:
            assert client.get("/v1/messages/none").status_code == 404
    # WHEN `jetmail keys limit KEY_ID --per-minute 7` runs  THEN the key carries its own limit
    limited = subprocess.run([sys.executable, "-m", "jetmail.cli", "keys", "limit", key.key_id, "--per-minute", "7"],
                             env=app_env, capture_output=True, text=True, timeout=60)
    assert limited.returncode == 0, limited.stderr
    assert services.api_keys.authenticate(new_token).rate_per_minute == 7  # type: ignore[union-attr]
    # AND an unknown key or a bad duration is one error line, not a traceback
    for args in (["rotate", "000000000000"], ["rotate", key.key_id, "--grace", "soon"],
                 ["limit", "000000000000", "--per-minute", "5"]):
        bad = subprocess.run([sys.executable, "-m", "jetmail.cli", "keys", *args], env=app_env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert "Error" in bad.stderr or "error" in bad.stderr


# ---------------------------------------------------------------- request rate limit


def _wait_for_room_in_the_minute(seconds: float = 25) -> None:
    """Counting windows are wall-clock minutes: start a counting test early enough to stay in one."""
    wait_until(lambda: time.time() % 60 < 60 - seconds, timeout=seconds + 5, what="room in the minute")


def test_a_key_over_its_limit_gets_429_with_retry_after(app: FastAPI, services: Services, unique: str) -> None:
    # GIVEN a key limited to 3 requests a minute, and another key
    _, token = services.api_keys.create(f"limited-{unique}", scopes=["send"], rate_per_minute=3)
    _, other = services.api_keys.create(f"unlimited-{unique}", scopes=["send"])
    _wait_for_room_in_the_minute()
    with _client(app, token) as client, _client(app, other) as bystander:
        # WHEN it makes a fourth request
        statuses = [client.get("/v1/messages/none").status_code for _ in range(3)]
        limited = client.get("/v1/messages/none")
        # THEN the first three pass and the fourth is 429 with Retry-After in seconds and a problem body, as documented
        assert statuses == [404, 404, 404]
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["type"] == "https://jetmail.dev/problems/rate-limited"
        assert "3 requests per minute" in limited.json()["detail"]
        # AND another key is not affected
        assert bystander.get("/v1/messages/none").status_code == 404
    documented = app.openapi()["paths"]["/v1/messages/{message_id}"]["get"]["responses"]["429"]
    assert "Retry-After" in documented["headers"]


def test_the_limit_holds_across_containers(services: Services, settings: Settings, unique: str) -> None:
    # GIVEN two separate apps (two Lambda containers) and the settings' default limit of 4 a minute
    limited = settings.model_copy(update={"api_rate_per_minute": 4})
    _, token = services.api_keys.create(f"spread-{unique}", scopes=["send"])
    _wait_for_room_in_the_minute()
    with _client(create_app(limited, services=services), token) as one, \
            _client(create_app(limited, services=services), token) as two:
        # WHEN the key's requests alternate between them
        statuses = [(one if i % 2 else two).get("/v1/messages/none").status_code for i in range(10)]
    # THEN exactly four get through in the minute, whichever container answered
    assert statuses.count(404) == 4 and statuses.count(429) == 6, statuses


def test_limiter_store_failure_fails_open_with_a_log_line(stack: StackState, services: Services,
                                                          caplog: pytest.LogCaptureFixture, unique: str) -> None:
    # GIVEN an API whose NATS (the limiter's store) is unreachable
    broken = make_settings(stack, nats_url=f"nats://127.0.0.1:{free_port()}", api_rate_per_minute=1)
    svc = Services(broken)
    _, token = services.api_keys.create(f"open-{unique}", scopes=["admin"])
    try:
        with caplog.at_level(logging.WARNING, logger="jetmail.api"), \
                _client(create_app(broken, services=svc), token) as client:
            # WHEN requests come in, more than the limit allows
            statuses = [client.get("/v1/templates").status_code for _ in range(3)]
    finally:
        svc.queue.close()
    # THEN they are served, and the log says the limit is not enforced
    assert statuses == [200, 200, 200]
    assert any("rate limit not enforced" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- body size and strict models


def test_body_size_limit_applies_with_and_without_content_length(services: Services, settings: Settings,
                                                                 api_token: str) -> None:
    # GIVEN an API that takes bodies up to 1 KiB
    small = settings.model_copy(update={"max_body_bytes": 1024})
    app = create_app(small, services=services)
    big = b'{"email": "a@example.com", "reason": "' + b"x" * 2000 + b'"}'

    def chunked(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 256):
            yield data[i:i + 256]

    with _client(app, api_token) as client:
        # WHEN a too large body comes with a Content-Length, and streamed in chunks without one
        declared = client.post("/v1/suppressions", content=big, headers={"Content-Type": "application/json"})
        streamed = client.post("/v1/suppressions", content=chunked(big), headers={"Content-Type": "application/json"})
        # THEN both are 413 with a problem body
        for resp in (declared, streamed):
            assert resp.status_code == 413 and resp.json()["type"] == "https://jetmail.dev/problems/body-too-large"
        # AND a small chunked body gets through to validation
        ok = client.post("/v1/suppressions", content=chunked(b'{"email": "not-an-address"}'),
                         headers={"Content-Type": "application/json"})
        assert ok.status_code == 422


def _object_schemas(schema: dict[str, Any], components: dict[str, Any], seen: set[str]) -> Iterator[tuple[str, Any]]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            target = components[name]
            yield name, target
            yield from _object_schemas(target, components, seen)
        return
    for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
        for part in schema.get(key, []):
            yield from _object_schemas(part, components, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _object_schemas(schema[key], components, seen)
    for prop in schema.get("properties", {}).values():
        yield from _object_schemas(prop, components, seen)


def test_every_request_model_rejects_unknown_fields(app: FastAPI, api_token: str) -> None:
    # GIVEN the OpenAPI document and every model a request body uses, nested ones included
    spec = app.openapi()
    components = spec["components"]["schemas"]
    models: dict[str, Any] = {}
    for path, operations in spec["paths"].items():
        for op in operations.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                seen: set[str] = set()
                schema = media.get("schema", {})
                if schema.get("properties"):
                    models[f"{path} inline"] = schema
                models.update(dict(_object_schemas(schema, components, seen)))
    assert "SendRequest" in models and "SuppressionCreate" in models
    # THEN each one with fields forbids others
    lax = [name for name, schema in models.items()
           if schema.get("type") == "object" and schema.get("properties") and schema.get("additionalProperties")
           is not False]
    assert lax == []
    # AND the API answers an unknown field with 422 naming it
    with _client(app, api_token) as client:
        resp = client.post("/v1/suppressions", json={"email": "x@example.com", "admin": True})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "admin"


# ---------------------------------------------------------------- CORS and headers


def test_no_cors_headers_unless_origins_are_configured(services: Services, settings: Settings,
                                                       api_token: str) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    # GIVEN the default settings  WHEN a browser asks  THEN no CORS header is in any answer
    with _client(create_app(settings, services=services), api_token) as client:
        for resp in (client.options("/v1/messages", headers=preflight),
                     client.get("/v1/templates", headers={"Origin": "https://app.example.com"})):
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    # GIVEN one allowed origin
    allowed = settings.model_copy(update={"cors_origins": ["https://app.example.com"]})
    with _client(create_app(allowed, services=services), api_token) as client:
        # THEN its preflight and requests are allowed, with the security headers too
        ok = client.options("/v1/messages", headers=preflight)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert ok.headers["x-content-type-options"] == "nosniff"
        simple = client.get("/v1/templates", headers={"Origin": "https://app.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        # AND another origin gets nothing
        other = client.get("/v1/templates", headers={"Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in other.headers
        denied = client.options("/v1/messages", headers={**preflight, "Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in denied.headers


def test_security_headers_on_every_answer_without_clobbering_a_routes_own(services: Services, settings: Settings,
                                                                          api_token: str) -> None:
    # GIVEN the app, plus one route that sets its own caching and type-sniffing headers
    app = create_app(settings, services=services)

    @app.get("/v1/own-headers", include_in_schema=False)
    def own() -> Response:
        return Response("{}", media_type="application/json",
                        headers={"Cache-Control": "private, max-age=60", "X-Content-Type-Options": "custom"})

    with _client(app, api_token) as client:
        # WHEN answers of every kind come back over plain HTTP
        answers = {"ok": client.get("/v1/templates"), "unauthorized": client.get("/v1/templates", headers={
            "Authorization": ""}), "not found": client.get("/v1/messages/none"), "health": client.get("/health"),
            "unsubscribe": client.get("/u/not-a-token")}
        # THEN each has nosniff, /v1 answers are not cacheable, and there is no HSTS without HTTPS
        for what, resp in answers.items():
            assert resp.headers["x-content-type-options"] == "nosniff", what
            assert "strict-transport-security" not in resp.headers, what
        for what in ("ok", "unauthorized", "not found"):
            assert answers[what].headers["cache-control"] == "no-store", what
        assert "cache-control" not in answers["health"].headers
        # AND a route's own headers are kept
        mine = client.get("/v1/own-headers")
        assert mine.headers["cache-control"] == "private, max-age=60"
        assert mine.headers["x-content-type-options"] == "custom"
        # WHEN the request came over HTTPS, behind API Gateway or a proxy  THEN HSTS is on
        proxied = client.get("/health", headers={"X-Forwarded-Proto": "https"})
        assert proxied.headers["strict-transport-security"].startswith("max-age=")
    with _client(app, api_token, base_url="https://testserver") as secure:
        assert "strict-transport-security" in secure.get("/v1/templates").headers


# ---------------------------------------------------------------- secrets in logs


class _AuthSink:
    """An SMTP server that requires AUTH with one user and password, and keeps what it receives."""

    def __init__(self, username: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.received: list[bytes] = []
        self.logins: list[str] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.received.append(envelope.content)
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            good = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == (
                username, password)
            if good:
                self.logins.append(username)
            return AuthResult(success=good)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                                     auth_required=True, auth_require_tls=False)

    def __enter__(self) -> _AuthSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a loopback test peer
def test_no_secret_appears_in_api_or_worker_logs(stack: StackState, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture, unique: str) -> None:
    smtp_user, smtp_password = "jetmail", f"smtp-pw-{unique}-Zq8"
    nats_user, nats_password = "jetmail", f"nats-pw-{unique}-Kx3"
    with _AuthSink(smtp_user, smtp_password) as sink:
        # GIVEN a private stack, a worker logging at DEBUG that delivers with SMTP AUTH, and an API whose
        # settings carry an SMTP password, a NATS password and the signing secret
        iso = Isolated(stack, tmp_path)
        try:
            secrets_env = {"JETMAIL_SMTP_PORT": str(sink.port), "JETMAIL_SMTP_USERNAME": smtp_user,
                           "JETMAIL_SMTP_PASSWORD": smtp_password, "JETMAIL_NATS_USER": nats_user,
                           "JETMAIL_NATS_PASSWORD": nats_password}
            iso.env.update(secrets_env)
            iso.start_worker("--log-level", "DEBUG")
            settings = iso.settings.model_copy(update={
                "smtp_port": sink.port, "smtp_username": smtp_user,
                "smtp_password": SecretStr(smtp_password),
                "nats_user": nats_user, "nats_password": SecretStr(nats_password)})
            signing_secret = settings.signing_secret.get_secret_value()
            services = Services(settings)
            # every logger at DEBUG, jetmail's too (a command run in this process earlier may have set its level)
            with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="jetmail"), \
                    _client(create_app(settings, services=services), iso.token) as c:
                logging.getLogger("jetmail").debug("settings in use: %r", settings)
                # WHEN a message is sent through the API and the worker delivers it
                resp = c.post("/v1/messages", json={"template": "password_reset", "to": f"log-{unique}@example.com",
                                                    "context": {"reset_url": "https://example.com/r",
                                                                "expires_in_minutes": 5}})
                assert resp.status_code in (201, 202), resp.text
                wait_until(lambda: len(sink.received) == 1, timeout=60, what="mail through the AUTH sink")
                # and a bad key is tried, whose refusal must not echo it
                c.get("/v1/templates", headers={"Authorization": "Bearer jm_000000000000_" + "y" * 43})
            services.queue.close()
        finally:
            iso.close()
        assert sink.logins == [smtp_user]
    # THEN neither the API's records (DEBUG, every logger) nor the worker's log holds any secret
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "DEBUG" in worker_log
    api_log = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert "settings in use" in api_log
    # the key is jm_<id>_<secret>, and the secret (URL-safe base64) may hold "_" itself: split off the prefix, not
    # the last part, or a chance two-letter tail of the secret turns up in any long log
    secrets = {"API key": iso.token, "API key secret": iso.token.split("_", 2)[2], "SMTP password": smtp_password,
               "NATS password": nats_password, "signing secret": signing_secret}
    for where, text in (("API log", api_log), ("worker log", worker_log)):
        leaked = [name for name, value in secrets.items() if value in text]
        assert leaked == [], f"{where} holds {leaked}"


def test_key_model_never_carries_the_digest(services: Services, unique: str) -> None:
    # GIVEN a stored key, rotated with grace  WHEN it is read back through the API key store
    key, _ = services.api_keys.create(f"model-{unique}", scopes=["send"])
    services.api_keys.rotate(key.key_id, grace=timedelta(hours=1))
    listed = next(k for k in services.api_keys.list() if k.key_id == key.key_id)
    # THEN the model the API hands around holds neither digest to leak into a log or a response
    assert listed.rotated_at is not None
    assert not [name for name in listed.model_dump() if "digest" in name]
    assert "digest" not in repr(listed)
