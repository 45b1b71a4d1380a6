"""One mapping from domain exceptions to HTTP answers; routes raise domain errors, never HTTPException
for them, and no error is recognised by its message text."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from jetmail.api.asgi import HttpMiddleware, send_json

logger = logging.getLogger("jetmail.api")

# Domain exceptions by class path ("module.Class"), each with its status. Named, not imported: importing them
# would load every domain module (templating with Jinja, campaigns, contacts, ...) into each API cold start,
# and an error is matched against this table only when one is raised (an exception's classes are all loaded
# by then). tests/api/test_api_errors.py checks that every path names an exception class.
STATUS_FOR: dict[str, int] = {
    "jetmail.api.limits.BodyTooLarge": 413,
    "jetmail.aws.sns.SnsMessageInvalid": 400,
    "jetmail.deliverability.ses_events.SesEventError": 400,
    "jetmail.aws.sns.SnsVerificationError": 403,
    "jetmail.aws.sns.SnsConfirmationFailed": 502,
    "jetmail.aws.sns.SnsCertificateUnavailable": 503,
    "jetmail.messaging.templates.TemplateNotFound": 404,
    "jetmail.campaigns.store.CampaignNotFound": 404,
    "jetmail.campaigns.service.UnknownAudience": 422,
    "jetmail.campaigns.service.VariantNotFound": 422,
    "jetmail.campaigns.store.InvalidTransition": 409,
    "jetmail.messaging.messages.MessageNotFound": 404,
    "jetmail.messaging.sequences.SequenceNotFound": 404,
    "jetmail.messaging.sequences.EnrolmentNotFound": 404,
    "jetmail.messaging.sequences.StepTimeError": 422,
    "jetmail.messaging.messages.IdempotencyConflict": 409,
    "jetmail.messaging.templates.TemplateConflict": 409,
    "jetmail.messaging.templating.errors.TemplateValidationError": 422,
    "jetmail.messaging.templating.errors.TemplateRenderError": 422,
    "jetmail.messaging.templating.errors.ReservedContextKeyError": 422,
    "jetmail.audience.addresses.InvalidAddress": 422,
    "jetmail.audience.model.ListNotFound": 404,
    "jetmail.audience.model.ContactNotFound": 404,
    "jetmail.audience.segments.SegmentNotFound": 404,
    "jetmail.audience.model.UnknownList": 422,
    "jetmail.audience.model.InvalidContact": 422,
    "jetmail.audience.model.ErasedAddress": 422,
    "jetmail.storage.cursors.InvalidCursor": 422,
    "jetmail.audience.model.InvalidImport": 422,
    "jetmail.audience.segments.CriteriaError": 422,
    "jetmail.audience.model.ContactConflict": 409,
    "jetmail.reporting.reports.InvalidRange": 422,
}


def status_for(exc: BaseException) -> int | None:
    """The status of a domain exception: its own class's, else its nearest mapped base class's."""
    for cls in type(exc).__mro__:
        status = STATUS_FOR.get(f"{cls.__module__}.{cls.__qualname__}")
        if status is not None:
            return status
    return None


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in exc.errors()]
        return JSONResponse({"error": "validation_error", "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": _code(exc.status_code), "detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    # Domain exceptions (STATUS_FOR) and anything else are answered by UnexpectedErrors, a middleware inside
    # CORS and SecurityHeaders (app.py): Starlette matches handlers by class object, which would mean importing
    # every domain module here, and a handler for Exception would run in Starlette's outermost middleware,
    # whose answers skip all of ours.


class UnexpectedErrors(HttpMiddleware):
    """The answer to an exception no handler took: a domain exception's status (STATUS_FOR) with its text, else
    a 500 with a fixed JSON body, the stack trace and the exception's text only in the log. The exception is not
    raised again, so the server in front (uvicorn, Mangum) neither answers a second way nor logs it twice."""

    BODY = json.dumps({"error": "internal", "detail": "internal error"}).encode()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            status = None if started else status_for(exc)
            if status is not None:
                body = {"error": _code(status), "detail": _detail(exc)}
                await send_json(send, status, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
                return
            logger.exception("unhandled error on %s %s", scope.get("method", ""), scope.get("path", ""))
            if started:  # part of an answer is out: nothing valid can follow, let the server drop it
                raise
            await send_json(send, 500, self.BODY)


def _detail(exc: Exception) -> Any:
    problems = getattr(exc, "problems", None)  # TemplateValidationError: one {field, message} per problem
    if problems is not None:
        return [p.model_dump() if hasattr(p, "model_dump") else dict(p.__dict__) for p in problems]
    return str(exc)


def _code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            409: "conflict", 413: "payload_too_large", 422: "validation_error", 429: "rate_limited",
            500: "internal", 502: "bad_gateway", 503: "unavailable"}.get(
                status, "error")
