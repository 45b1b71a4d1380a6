"""FastAPI application factory: ``create_app()`` for uvicorn, ``Mangum(create_app())`` in Lambda.

Each route module is imported and included on the first request under its paths (``ROUTE_PATHS``), so a cold
start that serves ``/v1/messages`` loads neither the campaigns, the webhooks (their HTTP client) nor the dashboard
(Jinja, css-inline). Asking the app for its routes (``app.routes``, the OpenAPI document) includes every one first.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from jetmail.api import errors
from jetmail.api.actor import bind_actor
from jetmail.api.asgi import HttpMiddleware
from jetmail.api.limits import BodySizeLimit, message_body_limits
from jetmail.api.throttle import ApiThrottle
from jetmail.config import Settings, get_settings
from jetmail.services import Services

# Route modules (jetmail.api.<name>) in the order their routes are matched, each with the path prefixes its
# routes lie under (tests/api/test_lazy_routes.py checks them). A request under a prefix includes the modules
# that declare it; a request no included route answers includes all the rest, so a missing prefix costs
# time, never a route.
ROUTE_PATHS: dict[str, tuple[str, ...]] = {
    "messages": ("/v1/messages",),
    "sns": ("/sns",),
    "templates": ("/v1/templates",),
    "sequences": ("/v1/sequences",),
    "campaigns": ("/v1/campaigns",),
    "tracking": ("/t", "/u"),
    "intake": ("/subscribe", "/confirm"),
    "pages": ("/p", "/v", "/archive"),
    "suppressions": ("/v1/suppressions",),
    "sending": ("/v1/sending",),
    "contacts": ("/v1/lists", "/v1/contacts", "/v1/segments"),
    "reports": ("/v1/campaigns", "/v1/stats"),
    "audit": ("/v1/audit",),
    "webhooks": ("/v1/webhooks",),
}
ROUTERS = tuple(ROUTE_PATHS)
DASHBOARD_PATH = "/dashboard"


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               routers: Sequence[str] = ROUTERS, dashboard: bool = True) -> JetmailApi:
    """The API with the route modules ``routers`` names (every one by default) and the dashboard. The SES
    events function serves only ``("sns",)`` without the dashboard."""
    settings = settings or get_settings()
    app = JetmailApi(
        title="jetmail",
        version="0.1.0",
        description="Transactional and campaign email over NATS JetStream. Every /v1 route needs "
                    "`Authorization: Bearer <api key>` (create one with `jetmail keys create --name N`).",
        dependencies=[Depends(bind_actor)],  # the audit log names each request's API key
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

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: answers without touching any dependency."""
        return {"status": "ok"}

    app.defer_routers({f"jetmail.api.{name}:router": ROUTE_PATHS[name] for name in routers})
    if dashboard:
        # HTML pages, left out of the OpenAPI schema; Jinja, the page code and what it reads load on first use
        app.defer_routers({"jetmail.dashboard:router": (DASHBOARD_PATH,)})
    app.openapi = _with_error_responses(app)  # type: ignore[method-assign]
    return app


class JetmailApi(FastAPI):
    """A FastAPI app whose routers are included on the first request under their path prefixes.

    The route modules and the domain modules whose models they declare are most of an API cold start; a
    request pays only for the modules under its path. Routes keep the order in which the routers were
    deferred, whatever order requests include them in. Starlette matches routes at request time, so a router
    included by a request serves that very request.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: dict[str, tuple[str, ...]] = {}  # "module:attribute" -> its path prefixes
        self._order: dict[str, int] = {}  # each deferred router's place among the routes
        self._rank: dict[int, int] = {}  # id(route) -> its place; routes there before any deferral: 0
        self._lock = threading.RLock()

    def defer_routers(self, routers: Mapping[str, tuple[str, ...]]) -> None:
        """Include each router (``"module:attribute"``) on the first request under one of its path prefixes."""
        with self._lock:
            for route in self.router.routes:
                self._rank.setdefault(id(route), 0)
            for where, prefixes in routers.items():
                self._order.setdefault(where, len(self._order) + 1)
                self._pending[where] = prefixes

    @property
    def pending(self) -> tuple[str, ...]:
        """The routers not included yet (``"module:attribute"``)."""
        return tuple(self._pending)

    @property
    def routes(self) -> list[BaseRoute]:
        """Every route, each deferred router included first."""
        self.include_all()
        return self.router.routes

    def include_all(self) -> None:
        """Include every deferred router now (SnapStart does, before its snapshot)."""
        self.include_routers(list(self._pending))

    def include_routers(self, names: Sequence[str]) -> None:
        """Include the deferred routers ``names`` (already included ones are skipped), then put every route back
        in the order of the routers' deferral."""
        with self._lock:
            todo = [where for where in names if where in self._pending]
            for where in todo:
                before = {id(route) for route in self.router.routes}
                module, _, attribute = where.partition(":")
                router: APIRouter = getattr(importlib.import_module(module), attribute)
                self.include_router(router)
                del self._pending[where]
                for route in self.router.routes:
                    if id(route) not in before:
                        self._rank[id(route)] = self._order[where]
            if todo:
                last = len(self._order) + 1  # routes added by hand after the app was made stay after the rest
                self.router.routes = sorted(self.router.routes, key=lambda route: self._rank.get(id(route), last))

    def include_for(self, scope: Scope) -> None:
        """Include the routers a request needs: those under its path; then, if no route has its path (whatever
        the method: a CORS preflight is answered by the middleware), every one."""
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root + "/"):  # mounted under a root path: routes see the rest
            path = path[len(root):]
        with self._lock:
            self.include_routers([where for where, prefixes in self._pending.items()
                                  if any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)])
            if self._pending and all(route.matches(scope)[0] is Match.NONE for route in self.router.routes):
                self.include_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._pending and scope["type"] == "http":
            self.include_for(scope)
        await super().__call__(scope, receive, send)


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
                        declared = response.get("content", {})
                        example = declared.get(PROBLEM_MEDIA_TYPE, {}).get("example")
                        # a page for a browser's form post stays declared beside the problem
                        others = {kind: content for kind, content in declared.items()
                                  if kind not in (PROBLEM_MEDIA_TYPE, "application/json")}
                        response["content"] = {**(body if example is None else {
                            PROBLEM_MEDIA_TYPE: {**body[PROBLEM_MEDIA_TYPE], "example": example}}), **others}
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
