"""One mapping from domain exceptions to HTTP answers, every one an RFC 9457 problem
(jetmail.api.conventions); routes raise domain errors, never HTTPException for them, and no error is
recognised by its message text."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from jetmail.api.asgi import HttpMiddleware, encode_problem, send_json
from jetmail.api.conventions import PROBLEM_MEDIA_TYPE, problem, slug_for_class

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
    "jetmail.messaging.messages.AttachmentsTooLarge": 413,
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
    "jetmail.audience.intake.InvalidSubscription": 422,
    "jetmail.storage.cursors.InvalidCursor": 422,
    "jetmail.audience.model.InvalidImport": 422,
    "jetmail.audience.segments.CriteriaError": 422,
    "jetmail.audience.model.ContactConflict": 409,
    "jetmail.reporting.reports.InvalidRange": 422,
    "jetmail.compliance.audit.InvalidAuditQuery": 422,
}


def status_for(exc: BaseException) -> int | None:
    """The status of a domain exception: its own class's, else its nearest mapped base class's."""
    mapped = _mapped(exc)
    return None if mapped is None else mapped[1]


def _mapped(exc: BaseException) -> tuple[str, int] | None:
    """The problem slug (the exception's own class name) and status of a domain exception."""
    for cls in type(exc).__mro__:
        status = STATUS_FOR.get(f"{cls.__module__}.{cls.__qualname__}")
        if status is not None:
            return slug_for_class(type(exc).__name__), status
    return None


def problem_for(exc: BaseException) -> dict[str, Any] | None:
    """The problem body a domain exception answers (None for one STATUS_FOR does not map): what a route that
    reports many outcomes in one answer (a batch) gives for each failed item."""
    mapped = _mapped(exc)
    if mapped is None:
        return None
    slug, status = mapped
    return problem(status, str(exc), slug=slug, errors=_field_errors(exc))


def validation_problem(errors: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The 422 problem for pydantic's errors (``ValidationError.errors()``), one field error each."""
    fields = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in errors]
    return problem(422, "invalid request: " + ", ".join(dict.fromkeys(f["field"] for f in fields)), errors=fields)


def problem_response(status: int, detail: str, *, slug: str | None = None, errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem(status, detail, slug=slug, errors=errors), status_code=status, headers=headers,
                        media_type=PROBLEM_MEDIA_TYPE)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_problem(exc.errors()), status_code=422, media_type=PROBLEM_MEDIA_TYPE)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    # Domain exceptions (STATUS_FOR) and anything else are answered by UnexpectedErrors, a middleware inside
    # CORS and SecurityHeaders (app.py): Starlette matches handlers by class object, which would mean importing
    # every domain module here, and a handler for Exception would run in Starlette's outermost middleware,
    # whose answers skip all of ours.


class UnexpectedErrors(HttpMiddleware):
    """The answer to an exception no handler took: a domain exception's status (STATUS_FOR) and problem type with
    its text, else a 500 with a fixed problem body, the stack trace and the exception's text only in the log. The
    exception is not raised again, so the server in front (uvicorn, Mangum) neither answers a second way nor logs
    it twice."""

    BODY = encode_problem(problem(500, "internal error"))

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
            body = None if started else problem_for(exc)
            if body is not None:
                await send_json(send, body["status"], encode_problem(body), media_type=PROBLEM_MEDIA_TYPE)
                return
            logger.exception("unhandled error on %s %s", scope.get("method", ""), scope.get("path", ""))
            if started:  # part of an answer is out: nothing valid can follow, let the server drop it
                raise
            await send_json(send, 500, self.BODY, media_type=PROBLEM_MEDIA_TYPE)


def _field_errors(exc: BaseException) -> list[dict[str, Any]] | None:
    problems = getattr(exc, "problems", None)  # TemplateValidationError, CriteriaError: one {field, message} each
    if problems is None:
        return None
    return [p.model_dump() if hasattr(p, "model_dump") else dict(p.__dict__) for p in problems]
