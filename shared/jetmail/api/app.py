"""FastAPI application factory: ``create_app()`` for uvicorn, ``Mangum(create_app())`` in Lambda."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jetmail import dashboard
from jetmail.api import (
    audit,
    campaigns,
    contacts,
    errors,
    messages,
    reports,
    sending,
    sequences,
    sns,
    suppressions,
    templates,
    tracking,
)
from jetmail.api.limits import BodySizeLimit
from jetmail.api.throttle import ApiThrottle
from jetmail.config import Settings, get_settings
from jetmail.services import Services


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # inside CORS and SecurityHeaders, so an unexpected error's 500 carries their headers like any answer
    app.add_middleware(errors.UnexpectedErrors)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Retry-After"], max_age=600)
    app.add_middleware(SecurityHeaders)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: answers without touching any dependency."""
        return {"status": "ok"}

    app.include_router(messages.router)
    app.include_router(sns.router)
    app.include_router(templates.router)
    app.include_router(sequences.router)
    app.include_router(campaigns.router)
    app.include_router(tracking.router)
    app.include_router(suppressions.router)
    app.include_router(sending.router)
    app.include_router(contacts.router)
    app.include_router(reports.router)
    app.include_router(audit.router)
    app.include_router(dashboard.router)  # HTML pages, left out of the OpenAPI schema
    app.openapi = _with_error_responses(app)  # type: ignore[method-assign]
    return app


ERROR_BODY: dict[str, Any] = {
    "title": "ErrorBody", "type": "object", "required": ["error", "detail"],
    "properties": {"error": {"type": "string", "description": "a short code: validation_error, not_found, ..."},
                   "detail": {"description": "a message, or a list of {field, message} for a validation error"}},
}
_V1_ERRORS = {401: "missing, invalid or revoked API key", 403: "the API key lacks the scope",
              404: "the resource, or one the request names (a template, list, sequence), does not exist",
              429: "the API key's request limit is reached; see Retry-After"}


def _with_error_responses(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with the error answers the app really gives (jetmail.api.errors): one error
    body for every 4xx, the 422 included (FastAPI's default declares its own validation shape), and the
    answers every keyed route can give."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["ErrorBody"] = ERROR_BODY
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path, operations in spec.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                wanted = {**_V1_ERRORS} if path.startswith("/v1/") else {}
                if operation.get("requestBody"):
                    wanted[400] = "the request body cannot be parsed"
                    wanted[413] = "the request body is too large"
                for status, description in wanted.items():
                    responses.setdefault(str(status), {"description": description})
                if "429" in responses:
                    responses["429"]["headers"] = {"Retry-After": {
                        "description": "seconds until the key may call again", "schema": {"type": "integer"}}}
                for status, response in responses.items():
                    if status.startswith("4"):
                        response["content"] = body
        return spec

    return openapi


class SecurityHeaders:
    """Headers every answer carries, added only where the route did not set its own (the dashboard and the
    tracking pages set their own Content-Security-Policy): no MIME sniffing; no caching of /v1 answers,
    which hold account data; HSTS when the request came over HTTPS (directly or through a proxy or API
    Gateway that says so in X-Forwarded-Proto)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
