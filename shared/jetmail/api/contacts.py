"""Contacts, lists, list imports and segments (admin scope)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from jetmail.api.auth import require, services
from jetmail.api.conventions import Page
from jetmail.audience.model import (
    Contact,
    ContactUpsert,
    ImportFormat,
    ImportReport,
    ListCreate,
    ListMember,
    ListUpdate,
    MailingList,
    SubscriptionStatus,
)
from jetmail.audience.segments import SegmentCreate, SegmentPreview, SegmentPublic
from jetmail.compliance.apikeys import ApiKey
from jetmail.compliance.gdpr import ErasureReport, PersonalData
from jetmail.services import Services

router = APIRouter(prefix="/v1")
Admin = Annotated[ApiKey, Depends(require("admin"))]
Svc = Annotated[Services, Depends(services)]
Email = Annotated[str, Path(max_length=320, description="the address; matched ignoring case")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "not found"}}


# ---- lists
@router.post("/lists", status_code=201, response_model=MailingList, tags=["lists"])
def create_list(body: ListCreate, key: Admin, svc: Svc) -> MailingList:
    """A private, double opt-in list unless the body says otherwise; ``public_id`` is its id on forms."""
    return svc.contacts.create_list(body)


@router.get("/lists", response_model=Page[MailingList], tags=["lists"])
def list_lists(key: Admin, svc: Svc) -> Page[MailingList]:
    """Oldest first; all of them in one page."""
    return Page(data=svc.contacts.lists(), next_cursor=None)


@router.get("/lists/{list_id}", response_model=MailingList, responses=NOT_FOUND, tags=["lists"])
def get_list(list_id: str, key: Admin, svc: Svc) -> MailingList:
    return svc.contacts.get_list(list_id)


@router.patch("/lists/{list_id}", response_model=MailingList, responses=NOT_FOUND, tags=["lists"])
def update_list(list_id: str, body: ListUpdate, key: Admin, svc: Svc) -> MailingList:
    """Change the given fields: the name, whether it is public, what subscribers see of it (``title``,
    ``description``), its opt-in mode and the attributes its form may set (``form_fields``)."""
    return svc.contacts.update_list(list_id, body)


@router.get("/lists/{list_id}/form", response_class=PlainTextResponse, tags=["lists"],
            responses={**NOT_FOUND, 422: {"description": "the list is not public"},
                       200: {"content": {"text/html": {"schema": {"type": "string"}}},
                             "description": "an HTML form to paste into a web page"}})
def list_form(list_id: str, key: Admin, svc: Svc, request: Request) -> PlainTextResponse:
    """An HTML form snippet that subscribes to the (public) list through ``POST /subscribe/{public_id}``."""
    from jetmail.api.intake import intake

    snippet = intake(request).form_snippet(svc.contacts.get_list(list_id))
    return PlainTextResponse(snippet, media_type="text/html")


@router.delete("/lists/{list_id}", status_code=204, response_class=Response, responses=NOT_FOUND, tags=["lists"])
def delete_list(list_id: str, key: Admin, svc: Svc) -> Response:
    """Delete the list and its memberships (contacts stay). Takes one request per 25 members; if a very
    large list's delete is cut off, calling again finishes it."""
    svc.contacts.delete_list(list_id)
    return Response(status_code=204)


@router.get("/lists/{list_id}/members", response_model=Page[ListMember], responses=NOT_FOUND, tags=["lists"])
def list_members(list_id: str, key: Admin, svc: Svc, status: SubscriptionStatus | None = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 cursor: Annotated[str | None, Query(max_length=2048)] = None) -> Page[ListMember]:
    """Members in address order, ``limit`` at a time; follow ``next_cursor`` until it is null."""
    page = svc.contacts.list_members(list_id, status=status, limit=limit, cursor=cursor)
    return Page(data=page.members, next_cursor=page.next_cursor)


@router.post("/lists/{list_id}/import", response_model=ImportReport, responses=NOT_FOUND, tags=["lists"],
             openapi_extra={"requestBody": {"required": True, "content": {
                 "text/csv": {"schema": {"type": "string"}},
                 "application/x-ndjson": {"schema": {"type": "string"}}}}})
async def import_members(list_id: str, request: Request, key: Admin, svc: Svc, format: ImportFormat = "csv",
                         status: SubscriptionStatus = "subscribed") -> ImportReport:
    """Import a CSV (header: email, name, language, timezone, attributes as JSON, any other column an
    attribute) or JSONL body into the list. The body streams through line by line; it is bounded by
    the API body limit (``JETMAIL_MAX_BODY_BYTES``): larger files go through
    ``jetmail contacts import``. Bad rows are reported by line number and skip nothing else."""
    chunks = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return None

    def body() -> Iterator[bytes]:
        # the import runs in a worker thread and pulls the body from the event loop as it goes
        while (chunk := anyio.from_thread.run(next_chunk)) is not None:
            if chunk:
                yield chunk

    try:
        return await run_in_threadpool(svc.contacts.import_members, body(), list_id=list_id, fmt=format,
                                       status=status)
    finally:
        await _close(chunks)


async def _close(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


# ---- contacts
@router.put("/contacts/{email}", response_model=Contact, tags=["contacts"],
            responses={201: {"model": Contact, "description": "created"}, 422: {"description": "invalid or "
                                                                                 "unknown list"}})
def upsert_contact(email: Email, body: ContactUpsert, key: Admin, svc: Svc, response: Response) -> Contact:
    """Create or update a contact. Given fields replace stored ones (null clears), omitted ones are kept;
    ``attributes`` merge key by key (null removes a key); ``lists`` sets the status in each named list.
    Answers 201 when the contact is new."""
    contact, created = svc.contacts.upsert(email, body)
    response.status_code = 201 if created else 200
    return contact


@router.get("/contacts/{email}", response_model=Contact, responses=NOT_FOUND, tags=["contacts"])
def get_contact(email: Email, key: Admin, svc: Svc) -> Contact:
    return svc.contacts.get(email)


@router.delete("/contacts/{email}", status_code=204, response_model=None, tags=["contacts"],
               responses={**NOT_FOUND, 200: {"model": ErasureReport, "description": "erased (erase=true)"}})
def delete_contact(email: Email, key: Admin, svc: Svc, response: Response,
                   erase: Annotated[bool, Query(description="erase everything held about the address "
                                                            "(GDPR art. 17), not only the contact")] = False,
                   ) -> Response | ErasureReport:
    """Without ``erase``: the contact and its memberships (404 when there is none). With
    ``erase=true``: every record about the address (contact, memberships, messages' personal fields,
    events, sequence enrolments; pending mail cancelled), leaving only a keyed hash in the suppression
    list so the address is never mailed again; answers 200 with what was removed, also when nothing
    was held (the address is suppressed all the same)."""
    if erase:
        response.status_code = 200
        return svc.privacy.erase(email)
    svc.contacts.delete(email)
    return Response(status_code=204)


@router.get("/contacts/{email}/export", response_model=PersonalData, tags=["contacts"],
            responses={422: {"description": "invalid address"}})
def export_contact(email: Email, key: Admin, svc: Svc) -> PersonalData:
    """Everything held about the address (GDPR art. 15/20): contact, list memberships, messages
    (with their context), delivery and engagement events, suppression entry, sequence enrolments."""
    return svc.privacy.export(email)


# ---- segments
@router.post("/segments", status_code=201, response_model=SegmentPublic, tags=["segments"])
def create_segment(body: SegmentCreate, key: Admin, svc: Svc) -> SegmentPublic:
    """Save criteria; an invalid condition answers 422 naming its path (``criteria.and[1].op``)."""
    return svc.segments.create(body)


@router.get("/segments", response_model=Page[SegmentPublic], tags=["segments"])
def list_segments(key: Admin, svc: Svc) -> Page[SegmentPublic]:
    """All of them in one page."""
    return Page(data=svc.segments.list(), next_cursor=None)


@router.get("/segments/{segment_id}", response_model=SegmentPublic, responses=NOT_FOUND, tags=["segments"])
def get_segment(segment_id: str, key: Admin, svc: Svc) -> SegmentPublic:
    return svc.segments.get(segment_id)


@router.delete("/segments/{segment_id}", status_code=204, response_class=Response, responses=NOT_FOUND,
               tags=["segments"])
def delete_segment(segment_id: str, key: Admin, svc: Svc) -> Response:
    svc.segments.delete(segment_id)
    return Response(status_code=204)


@router.post("/segments/{segment_id}/preview", response_model=SegmentPreview, responses=NOT_FOUND,
             tags=["segments"])
def preview_segment(segment_id: str, key: Admin, svc: Svc) -> SegmentPreview:
    """How many members match now, and the first 10 (evaluates the whole segment)."""
    return svc.segments.preview(segment_id)
