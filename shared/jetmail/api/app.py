"""FastAPI application factory: ``create_app()`` for uvicorn, ``Mangum(create_app())`` in Lambda."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Depends, FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jetmail.api import audit, errors
from jetmail.api.asgi import HttpMiddleware
from jetmail.api.limits import BodySizeLimit, message_body_limits
from jetmail.api.throttle import ApiThrottle
from jetmail.config import Settings, get_settings
from jetmail.services import Services

# Route modules (jetmail.api.<name>) in the order their routes are matched.
ROUTERS = ("messages", "sns", "templates", "sequences", "campaigns", "tracking", "suppressions", "sending",
           "contacts", "reports", "audit", "webhooks")


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               routers: Sequence[str] = ROUTERS, dashboard: bool = True) -> FastAPI:
    """The API with the route modules ``routers`` names (every one by default) and the dashboard. The SES
    events function serves only ``("sns",)`` without the dashboard: a cold start that imports only its routes."""
    settings = settings or get_settings()
    app = FastAPI(
        title="jetmail",
        version="0.1.0",
        description="Transactional and campaign email over NATS JetStream. Every /v1 route needs "
                    "`Authorization: Bearer <api key>` (create one with `jetmail keys create --name N`).",
        dependencies=[Depends(audit.bind_actor)],  # the audit log names each request's API key
    )
    svc = app.state.services = services or Services(settings)
    app.state.throttle = ApiThrottle(lambda: svc.queue, per_minute=settings.api_rate_per_minute,
                                     replicas=settings.stream_replicas)
    errors.install(app)
    # the last one added runs first: security headers go on every answer, 413s and CORS preflights included
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, route_limits=message_body_limits(settings))
    # inside CORS and SecurityHeaders, so an unexpected error's 500 carries their headers like any answer
    app.add_middleware(errors.UnexpectedErrors)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Retry-After"], max_age=600)
    app.add_middleware(SecurityHeaders)
    if dashboard:
        # HTML pages, left out of the OpenAPI schema; Jinja, the page code and what it reads load on first use
        app.add_middleware(LazyRouters, target=app, routers={DASHBOARD_PATH: "jetmail.dashboard:router"})

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: answers without touching any dependency."""
        return {"status": "ok"}

    for name in routers:
        app.include_router(importlib.import_module(f"jetmail.api.{name}").router)
    app.openapi = _with_error_responses(app)  # type: ignore[method-assign]
    return app


DASHBOARD_PATH = "/dashboard"


class LazyRouters:
    """Includes a router into ``target`` on the first request under its path prefix.

    The dashboard's pages pull in Jinja, css-inline and most of the domain modules; an API cold start that
    serves ``/v1/messages`` should not pay for them. Starlette matches routes at request time, so a router
    included here serves this very request and every later one (the prefix is checked once per request).
    ``routers`` maps a path prefix to ``"module:attribute"``.
    """

    def __init__(self, app: ASGIApp, *, target: FastAPI, routers: dict[str, str]) -> None:
        self.app = app
        self.target = target
        self.pending = dict(routers)
        self._lock = threading.Lock()

    def include(self, prefix: str) -> None:
        with self._lock:
            where = self.pending.pop(prefix, None)
            if where is not None:
                module, _, attribute = where.partition(":")
                self.target.include_router(getattr(importlib.import_module(module), attribute))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.pending and scope["type"] == "http":
            path: str = scope.get("path", "")
            for prefix in list(self.pending):
                if path == prefix or path.startswith(prefix + "/"):
                    self.include(prefix)
        await self.app(scope, receive, send)


_V1_ERRORS = {401: "missing, invalid or revoked API key", 403: "the API key lacks the scope",
              404: "the resource, or one the request names (a template, list, sequence), does not exist",
              429: "the API key's request limit is reached; see Retry-After"}


def _with_error_responses(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with the error answers the app really gives (jetmail.api.errors): one ``Problem``
    (RFC 9457, ``application/problem+json``) for every 4xx and 5xx, the 422 included (FastAPI's default
    declares its own validation shape), and the answers every keyed route can give."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        from jetmail.api.conventions import PROBLEM_MEDIA_TYPE, Problem

        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        body = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in spec.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                wanted = {**_V1_ERRORS} if path.startswith("/v1/") else {}
                if operation.get("requestBody"):
                    wanted[400] = "the request body cannot be parsed"
                    wanted[413] = "the request body is too large"
                wanted[500] = "an unexpected error (logged with its stack trace; the body says no more)"
                for status, description in wanted.items():
                    responses.setdefault(str(status), {"description": description})
                if "429" in responses:
                    responses["429"]["headers"] = {"Retry-After": {
                        "description": "seconds until the key may call again", "schema": {"type": "integer"}}}
                if "401" in responses:
                    responses["401"]["headers"] = {"WWW-Authenticate": {
                        "description": "`Bearer`", "schema": {"type": "string"}}}
                for status, response in responses.items():
                    if status[0] in "45":
                        example = response.get("content", {}).get(PROBLEM_MEDIA_TYPE, {}).get("example")
                        response["content"] = body if example is None else {
                            PROBLEM_MEDIA_TYPE: {**body[PROBLEM_MEDIA_TYPE], "example": example}}
        return spec

    return openapi


class SecurityHeaders(HttpMiddleware):
    """Headers every answer carries, added only where the route did not set its own (the dashboard and the
    tracking pages set their own Content-Security-Policy): no MIME sniffing; no caching of /v1 answers,
    which hold account data; HSTS when the request came over HTTPS (directly or through a proxy or API
    Gateway that says so in X-Forwarded-Proto)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-proto", b"").split(b",")[0].strip()
        https = scope.get("scheme") == "https" or forwarded.lower() == b"https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if path == "/v1" or path.startswith("/v1/"):
                    headers.setdefault("Cache-Control", "no-store")
                if https:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
            await send(message)

        await self.app(scope, receive, send_with_headers)
