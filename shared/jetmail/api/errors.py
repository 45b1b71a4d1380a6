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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jetmail.api.limits import BodyTooLarge
from jetmail.campaigns.service import CampaignNotFound, InvalidTransition, UnknownAudience, VariantNotFound
from jetmail.contacts import (
    ContactConflict,
    ContactNotFound,
    ErasedAddress,
    InvalidContact,
    InvalidImport,
    ListNotFound,
    UnknownList,
)
from jetmail.cursors import InvalidCursor
from jetmail.messages import IdempotencyConflict, InvalidAddress, MessageNotFound
from jetmail.reports import InvalidRange
from jetmail.segments import CriteriaError, SegmentNotFound
from jetmail.sequences import EnrolmentNotFound, SequenceNotFound, StepTimeError
from jetmail.ses_events import SesEventError
from jetmail.sns import SnsCertificateUnavailable, SnsConfirmationFailed, SnsMessageInvalid, SnsVerificationError
from jetmail.template_store import TemplateConflict, TemplateNotFound
from jetmail.templating import ReservedContextKeyError, TemplateRenderError, TemplateValidationError

logger = logging.getLogger("jetmail.api")

STATUS_FOR: list[tuple[type[Exception], int]] = [
    (BodyTooLarge, 413),
    (SnsMessageInvalid, 400),
    (SesEventError, 400),
    (SnsVerificationError, 403),
    (SnsConfirmationFailed, 502),
    (SnsCertificateUnavailable, 503),
    (TemplateNotFound, 404),
    (CampaignNotFound, 404),
    (UnknownAudience, 422),
    (VariantNotFound, 422),
    (InvalidTransition, 409),
    (MessageNotFound, 404),
    (SequenceNotFound, 404),
    (EnrolmentNotFound, 404),
    (StepTimeError, 422),
    (IdempotencyConflict, 409),
    (TemplateConflict, 409),
    (TemplateValidationError, 422),
    (TemplateRenderError, 422),
    (ReservedContextKeyError, 422),
    (InvalidAddress, 422),
    (ListNotFound, 404),
    (ContactNotFound, 404),
    (SegmentNotFound, 404),
    (UnknownList, 422),
    (InvalidContact, 422),
    (ErasedAddress, 422),
    (InvalidCursor, 422),
    (InvalidImport, 422),
    (CriteriaError, 422),
    (ContactConflict, 409),
    (InvalidRange, 422),
]


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

    for exc_type, status in STATUS_FOR:
        app.add_exception_handler(exc_type, _domain_handler(status))
    # Anything else is answered by UnexpectedErrors, a middleware inside CORS and SecurityHeaders (app.py): a
    # handler for Exception would run in Starlette's outermost middleware, whose answers skip all of ours.


class UnexpectedErrors:
    """A 500 for an exception nothing else handled: a fixed JSON body, the stack trace and the exception's
    text only in the log. The exception is not raised again, so the server in front (uvicorn, Mangum)
    neither answers a second way nor logs it twice."""

    BODY = json.dumps({"error": "internal", "detail": "internal error"}).encode()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method", ""), scope.get("path", ""))
            if started:  # part of an answer is out: nothing valid can follow, let the server drop it
                raise
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(self.BODY)).encode())]})
            await send({"type": "http.response.body", "body": self.BODY})


def _domain_handler(status: int) -> Any:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        detail: Any = str(exc)
        if isinstance(exc, TemplateValidationError):
            detail = [p.model_dump() if hasattr(p, "model_dump") else dict(p.__dict__) for p in exc.problems]
        return JSONResponse({"error": _code(status), "detail": detail}, status_code=status)

    return handler


def _code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            409: "conflict", 413: "payload_too_large", 422: "validation_error", 429: "rate_limited",
            500: "internal", 502: "bad_gateway", 503: "unavailable"}.get(
                status, "error")
