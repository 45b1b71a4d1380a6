"""Every API call, described once for both clients. Each method builds a ``Call`` and hands it to ``_call``
(one request, retried by the policy) or ``_pages`` (a list route followed through ``next_cursor``); the sync
client returns what they give, the async one awaitables and async iterators of the same."""

from __future__ import annotations

import base64
import mimetypes
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from jetmail.client.calls import Call, JsonObject

R = TypeVar("R")  # what one call returns: a JSON object, or an awaitable of one
P = TypeVar("P")  # what a list iteration returns: an iterator of JSON objects, or an async iterator


def attachment(source: bytes | str | Path, *, filename: str | None = None, content_type: str | None = None,
               content_id: str | None = None) -> JsonObject:
    """An ``attachments`` item from bytes (give ``filename``) or a file path (read now). The content type
    defaults to the one the file name's extension implies; ``content_id`` makes it an inline image the HTML
    shows as ``<img src="cid:...">``."""
    if isinstance(source, bytes):
        if not filename:
            raise ValueError("an attachment from bytes needs a filename")
        data = source
    else:
        path = Path(source)
        data = path.read_bytes()
        filename = filename or path.name
    item: JsonObject = {
        "filename": filename, "content": base64.b64encode(data).decode("ascii"),
        "content_type": content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream",
    }
    if content_id:
        item["content_id"] = content_id
    return item


def message(to: str, *, template: str | None = None, subject: str | None = None, html: str | None = None,
            text: str | None = None, context: Mapping[str, Any] | None = None, name: str | None = None,
            cc: Iterable[str] = (), bcc: Iterable[str] = (), reply_to: str | None = None,
            from_: str | None = None, language: str | None = None, timezone: str | None = None,
            send_at: datetime | str | None = None, headers: Mapping[str, str] | None = None,
            metadata: Mapping[str, str] | None = None, tags: Iterable[str] = (),
            attachments: Iterable[JsonObject] = ()) -> JsonObject:
    """A ``POST /v1/messages`` body: a stored ``template``, or inline ``subject`` with ``html`` and/or ``text``.
    ``attachments`` are ``attachment(...)`` items. Fields left out are left to the server's defaults."""
    body: JsonObject = {
        "to": to, "template": template, "subject": subject, "html": html, "text": text, "name": name,
        "reply_to": reply_to, "from": from_, "language": language, "timezone": timezone,
        "send_at": send_at.isoformat() if isinstance(send_at, datetime) else send_at,
        "context": dict(context) if context else None, "cc": list(cc), "bcc": list(bcc),
        "headers": dict(headers) if headers else None, "metadata": dict(metadata) if metadata else None,
        "tags": list(tags), "attachments": list(attachments),
    }
    return {k: v for k, v in body.items() if v is not None and v != []}


def _seg(value: str) -> str:
    return quote(value, safe="@")


class Endpoints(ABC, Generic[R, P]):
    """The API's routes as methods. Lists come two ways: ``list_*`` returns one page (``data`` and
    ``next_cursor``), ``iter_*`` yields every item, fetching the next page as the last one runs out."""

    @abstractmethod
    def _call(self, call: Call) -> R: ...

    @abstractmethod
    def _pages(self, call: Call) -> P: ...

    # ---- messages
    def send(self, to: str, *, idempotency_key: str | None = None, **fields: Any) -> R:
        """Queue one message (``POST /v1/messages``); ``fields`` are ``message()``'s. An Idempotency-Key is
        made when none is given, so a retry after a lost answer sends nothing twice."""
        return self.send_message(message(to, **fields), idempotency_key=idempotency_key)

    def send_message(self, body: JsonObject, *, idempotency_key: str | None = None) -> R:
        """Queue one message from a ready ``message()`` body."""
        key = idempotency_key or str(uuid.uuid4())
        return self._call(Call("POST", "/v1/messages", body=body, headers={"Idempotency-Key": key}))

    def send_batch(self, messages: Iterable[JsonObject], *, idempotency_key: str | None = None) -> R:
        """Queue up to 500 ``message()`` bodies (``POST /v1/messages/batch``); each may carry its own
        ``idempotency_key``, else the request's key with ``:<index>`` appended is its key."""
        key = idempotency_key or str(uuid.uuid4())
        return self._call(Call("POST", "/v1/messages/batch", body={"messages": list(messages)},
                               headers={"Idempotency-Key": key}))

    def get_message(self, message_id: str) -> R:
        return self._call(Call("GET", f"/v1/messages/{_seg(message_id)}"))

    # ---- contacts and lists
    def upsert_contact(self, email: str, **fields: Any) -> R:
        """Create or update a contact (``PUT /v1/contacts/{email}``): name, language, timezone, attributes,
        and ``lists`` (list id to subscription status)."""
        return self._call(Call("PUT", f"/v1/contacts/{_seg(email)}", body=fields))

    def get_contact(self, email: str) -> R:
        return self._call(Call("GET", f"/v1/contacts/{_seg(email)}"))

    def delete_contact(self, email: str, *, erase: bool = False) -> R:
        """Delete the contact; ``erase=True`` erases everything held about the address (GDPR art. 17)."""
        return self._call(Call("DELETE", f"/v1/contacts/{_seg(email)}", params={"erase": "true" if erase else None}))

    def import_contacts(self, list_id: str, data: bytes, *, format: str = "csv", status: str = "subscribed") -> R:
        """Import a CSV or JSONL (``format="jsonl"``) body into a list; the report names bad rows."""
        content_type = "text/csv" if format == "csv" else "application/x-ndjson"
        return self._call(Call("POST", f"/v1/lists/{_seg(list_id)}/import", params={"format": format, "status": status},
                               content=data, content_type=content_type))

    def export_contact(self, email: str) -> R:
        """Everything held about the address (GDPR art. 15/20): contact, memberships, messages, events,
        suppression, sequence enrolments."""
        return self._call(Call("GET", f"/v1/contacts/{_seg(email)}/export"))

    def create_list(self, name: str, **settings: Any) -> R:
        """``settings``: public, title, description, opt_in, form_fields."""
        return self._call(Call("POST", "/v1/lists", body={"name": name, **settings}))

    def update_list(self, list_id: str, **fields: Any) -> R:
        """Change the given fields: name, public, title, description, opt_in, form_fields."""
        return self._call(Call("PATCH", f"/v1/lists/{_seg(list_id)}", body=fields))

    def get_list(self, list_id: str) -> R:
        return self._call(Call("GET", f"/v1/lists/{_seg(list_id)}"))

    def delete_list(self, list_id: str) -> R:
        return self._call(Call("DELETE", f"/v1/lists/{_seg(list_id)}"))

    def iter_lists(self) -> P:
        return self._pages(Call("GET", "/v1/lists"))

    def list_members(self, list_id: str, *, status: str | None = None, limit: int | None = None,
                     cursor: str | None = None) -> R:
        return self._call(Call("GET", f"/v1/lists/{_seg(list_id)}/members",
                               params={"status": status, "limit": limit, "cursor": cursor}))

    def iter_members(self, list_id: str, *, status: str | None = None, limit: int | None = None) -> P:
        return self._pages(Call("GET", f"/v1/lists/{_seg(list_id)}/members", params={"status": status, "limit": limit}))

    # ---- suppressions
    def add_suppression(self, email: str, *, reason: str = "manual") -> R:
        """Suppress an address: ``manual``, ``hard_bounce`` and ``spam_complaint`` block all mail,
        ``unsubscribed`` marketing only."""
        return self._call(Call("POST", "/v1/suppressions", body={"email": email, "reason": reason}))

    def get_suppression(self, email: str) -> R:
        return self._call(Call("GET", f"/v1/suppressions/{_seg(email)}"))

    def delete_suppression(self, email: str) -> R:
        return self._call(Call("DELETE", f"/v1/suppressions/{_seg(email)}"))

    def list_suppressions(self, *, limit: int | None = None, cursor: str | None = None,
                          search: str | None = None) -> R:
        return self._call(Call("GET", "/v1/suppressions", params={"limit": limit, "cursor": cursor, "search": search}))

    def iter_suppressions(self, *, limit: int | None = None, search: str | None = None) -> P:
        """Newest first; ``limit`` is the page size."""
        return self._pages(Call("GET", "/v1/suppressions", params={"limit": limit, "search": search}))

    # ---- campaigns
    def create_campaign(self, body: JsonObject) -> R:
        """Create a draft from a ``CampaignCreate`` body (docs/reference/api.md): name, template, audience..."""
        return self._call(Call("POST", "/v1/campaigns", body=body))

    def get_campaign(self, campaign_id: str) -> R:
        return self._call(Call("GET", f"/v1/campaigns/{_seg(campaign_id)}"))

    def iter_campaigns(self) -> P:
        """Newest first."""
        return self._pages(Call("GET", "/v1/campaigns"))

    def update_campaign(self, campaign_id: str, **fields: Any) -> R:
        """Change ``archive`` and ``archive_context`` (in any state)."""
        return self._call(Call("PATCH", f"/v1/campaigns/{_seg(campaign_id)}", body=fields))

    def send_campaign(self, campaign_id: str) -> R:
        return self._call(Call("POST", f"/v1/campaigns/{_seg(campaign_id)}/send"))

    def schedule_campaign(self, campaign_id: str, **fields: Any) -> R:
        """Start at ``at`` (with ``timezone``) or on a 5-field ``cron``."""
        return self._call(Call("POST", f"/v1/campaigns/{_seg(campaign_id)}/schedule", body=fields))

    def pause_campaign(self, campaign_id: str) -> R:
        return self._call(Call("POST", f"/v1/campaigns/{_seg(campaign_id)}/pause"))

    def resume_campaign(self, campaign_id: str) -> R:
        return self._call(Call("POST", f"/v1/campaigns/{_seg(campaign_id)}/resume"))

    def cancel_campaign(self, campaign_id: str) -> R:
        return self._call(Call("POST", f"/v1/campaigns/{_seg(campaign_id)}/cancel"))

    def campaign_report(self, campaign_id: str) -> R:
        """Counts, rates, hourly timeline, links, countries, mail clients and A/B variants, as JSON."""
        return self._call(Call("GET", f"/v1/campaigns/{_seg(campaign_id)}/report"))

    def list_campaign_failures(self, campaign_id: str, *, limit: int | None = None,
                               cursor: str | None = None) -> R:
        return self._call(Call("GET", f"/v1/campaigns/{_seg(campaign_id)}/failures",
                               params={"limit": limit, "cursor": cursor}))

    def iter_campaign_failures(self, campaign_id: str, *, limit: int | None = None) -> P:
        """Recipients the campaign failed for good, in batch order; ``limit`` is the page size."""
        return self._pages(Call("GET", f"/v1/campaigns/{_seg(campaign_id)}/failures", params={"limit": limit}))

    # ---- templates
    def iter_templates(self) -> P:
        """The latest version of every (template, locale)."""
        return self._pages(Call("GET", "/v1/templates"))

    def get_template(self, name: str, *, locale: str | None = None, version: int | None = None) -> R:
        return self._call(Call("GET", f"/v1/templates/{_seg(name)}", params={"locale": locale, "version": version}))

    def put_template(self, name: str, *, subject: str, html: str, text: str | None = None, locale: str = "en",
                     category: str = "transactional") -> R:
        """Store new content for one locale as the template's next version."""
        return self._call(Call("PUT", f"/v1/templates/{_seg(name)}", body={
            "subject": subject, "html": html, "text": text, "locale": locale, "category": category}))

    # ---- webhooks
    def create_webhook(self, url: str, *, events: Iterable[str] | None = None, **fields: Any) -> R:
        """Register an endpoint (``POST /v1/webhooks``) for ``events`` (default: all), with an optional
        ``filter`` and ``description``; the answer carries its signing ``secret``."""
        body = {"url": url, **fields} if events is None else {"url": url, "events": list(events), **fields}
        return self._call(Call("POST", "/v1/webhooks", body=body))

    def iter_webhooks(self, *, limit: int | None = None) -> P:
        return self._pages(Call("GET", "/v1/webhooks", params={"limit": limit}))

    def delete_webhook(self, endpoint_id: str) -> R:
        return self._call(Call("DELETE", f"/v1/webhooks/{_seg(endpoint_id)}"))

    def rotate_webhook_secret(self, endpoint_id: str, *, grace_hours: float | None = None) -> R:
        """A new secret; the old one keeps signing beside it for ``grace_hours``. Answers with the new one."""
        body = None if grace_hours is None else {"grace_hours": grace_hours}
        return self._call(Call("POST", f"/v1/webhooks/{_seg(endpoint_id)}/rotate", body=body))
