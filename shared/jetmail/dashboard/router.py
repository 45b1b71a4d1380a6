"""The server-rendered dashboard under ``/dashboard``: log in with an admin API key, then read campaigns
and their reports (with their permanent failures), the message log (search, and a message's timeline), the
suppression list, dead letters (and replay them) and the sending status (and resume marketing after a
reputation stop), the lists (make one public, set how people join it, copy its subscribe form), and the webhook
endpoints (create, enable or disable, delete, rotate a secret, read each one's
delivery log and replay one delivery or a time range). Plain HTML forms; no JavaScript is needed to read or act."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError

from jetmail.api.auth import services as _services
from jetmail.audience.model import ListNotFound, ListUpdate
from jetmail.campaigns.service import CampaignNotFound
from jetmail.dashboard.session import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_TTL_S,
    SESSION_COOKIE,
    Session,
    Sessions,
    csrf_ok,
    same_origin,
    session_key,
)
from jetmail.dashboard.views import NONE, percent, report_view
from jetmail.deliverability import sending
from jetmail.deliverability.suppressions import Suppression, SuppressionStore
from jetmail.messaging.log import InvalidSearch, LogFilter, open_log
from jetmail.messaging.messages import TAG_PATTERN, MessageNotFound, MessageStatus
from jetmail.queue import NotFoundError, QueueError
from jetmail.services import Services
from jetmail.storage import keys
from jetmail.storage.cursors import InvalidCursor, pack, unpack
from jetmail.storage.table import key_values, resume_after
from jetmail.webhooks import EVENT_TYPES
from jetmail.webhooks.endpoints import EndpointCreate, EndpointFilter, EndpointNotFound, EndpointUpdate

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
DLQ_PAGE = 100
FAILURE_PAGE = 50
SUPPRESSION_PAGE = 100
SEARCH_SCAN_CAP = 20_000
MAX_CURSOR = 2048
MESSAGE_PAGE = 50
ENDPOINT_PAGE = 100
DELIVERY_PAGE = 50
MAX_GRACE_HOURS = 24 * 7
STATUSES = [s.value for s in MessageStatus]


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form, never with data."""


class DashboardRoute(APIRoute):
    """Every dashboard answer carries the security headers; a missing session becomes a redirect to the login
    form and bad input an HTML error page, both without leaving the dashboard."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = RedirectResponse(f"{_base(request)}/login", status_code=303)
                if SESSION_COOKIE in request.cookies:
                    _clear(response, request, SESSION_COOKIE)
            except RequestValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                                     for e in exc.errors())
                response = render(request, "message.html", session=None, status=422, title="Bad request",
                                  error=f"Invalid input ({problems}).")
            response.headers.update(SECURITY_HEADERS)
            return response

        return run


router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False, route_class=DashboardRoute)


# ---- rendering
@cache
def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = percent
    env.filters["num"] = lambda value: NONE if value is None else f"{value:,}"
    env.filters["when"] = lambda value: (value or NONE)[:19].replace("T", " ")
    return env


@cache
def stylesheet() -> str:
    return (HERE / "dashboard.css").read_text()


def _base(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{COOKIE_PATH}"


def render(request: Request, name: str, *, session: Session | None, title: str, status: int = 200,
           **context: Any) -> HTMLResponse:
    context.setdefault("notice", None)
    context.setdefault("error", None)
    html = templates().get_template(name).render(base=_base(request), session=session, title=title, **context)
    return HTMLResponse(html, status_code=status)


def _sessions(request: Request) -> Sessions:
    return Sessions(_services(request).signer)


def _set(response: Response, request: Request, name: str, value: str, *, max_age: int, path: str = "") -> None:
    response.set_cookie(name, value, max_age=max_age, path=_base(request) + path, secure=True, httponly=True,
                        samesite="strict")


def _clear(response: Response, request: Request, name: str, *, path: str = "") -> None:
    response.delete_cookie(name, path=_base(request) + path, secure=True, httponly=True, samesite="strict")


def current_session(request: Request) -> Session:
    session = _sessions(request).read(request.cookies.get(SESSION_COOKIE))
    key = session_key(_services(request).api_keys, session) if session is not None else None
    if session is None or key is None:
        raise LoginRequired
    request.state.api_key = key  # the audit log names the key behind the session as the actor
    return session


Auth = Annotated[Session, Depends(current_session)]
Svc = Annotated[Services, Depends(_services)]
Csrf = Annotated[str, Form()]


def _cross_site(request: Request) -> bool:
    return not same_origin(origin=request.headers.get("origin"), fetch_site=request.headers.get("sec-fetch-site"),
                           host=request.headers.get("host"))


def _forbidden(request: Request, session: Session | None) -> HTMLResponse:
    return render(request, "message.html", session=session, status=403, title="Refused",
                  error="The form was not sent from this dashboard (missing or stale CSRF token, or another "
                        "origin). Reload the page and try again.")


# ---- login
def _login_form(request: Request, *, status: int = 200, error: str | None = None) -> HTMLResponse:
    token = _sessions(request).login_token()
    response = render(request, "login.html", session=None, title="Log in", status=status, error=error,
                      login_token=token)
    _set(response, request, LOGIN_COOKIE, token, max_age=LOGIN_TTL_S, path="/login")
    return response


@router.get("", response_class=HTMLResponse)
def home(request: Request, session: Auth) -> Response:
    return RedirectResponse(f"{_base(request)}/campaigns", status_code=303)


@router.get("/style.css")
def style() -> Response:
    return Response(stylesheet(), media_type="text/css")


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return _login_form(request)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, svc: Svc, api_key: Annotated[str, Form()] = "", csrf: Csrf = "") -> Response:
    sessions = _sessions(request)
    if _cross_site(request) or not sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), csrf):
        return _login_form(request, status=403, error="The login form expired or was not sent from this page. "
                                                      "Please try again.")
    key = svc.api_keys.authenticate(api_key.strip()[:200])
    if key is None:
        return _login_form(request, status=401, error="Invalid or revoked API key.")
    if not key.allows("admin"):
        return _login_form(request, status=403, error="This API key lacks the admin scope; the dashboard needs "
                                                      "an admin key.")
    cookie, _ = sessions.issue(key)
    response = RedirectResponse(f"{_base(request)}/campaigns", status_code=303)
    _set(response, request, SESSION_COOKIE, cookie, max_age=sessions.ttl_s)
    _clear(response, request, LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request, session: Auth, csrf: Csrf = "") -> Response:
    if _cross_site(request) or not csrf_ok(session, csrf):
        return _forbidden(request, session)
    response = RedirectResponse(f"{_base(request)}/login", status_code=303)
    _clear(response, request, SESSION_COOKIE)
    return response


# ---- campaigns
@router.get("/campaigns", response_class=HTMLResponse)
def campaigns_page(request: Request, session: Auth, svc: Svc) -> Response:
    return render(request, "campaigns.html", session=session, title="Campaigns", campaigns=svc.campaigns.list())


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def report_page(request: Request, campaign_id: str, session: Auth, svc: Svc,
                failures: Annotated[str | None, Query(max_length=1024)] = None) -> Response:
    """The report, and the campaign's permanent failures ``FAILURE_PAGE`` at a time (``failures`` is the
    cursor of the next ones)."""
    try:
        report = svc.reports.campaign_report(campaign_id)
        failed = svc.campaigns.failures(campaign_id, limit=FAILURE_PAGE, cursor=failures or None)
    except CampaignNotFound as exc:
        return render(request, "message.html", session=session, status=404, title="Not found", error=str(exc))
    except InvalidCursor:
        return render(request, "message.html", session=session, status=422, title="Bad request",
                      error="That link to more failures is not valid; open the campaign again.")
    return render(request, "report.html", session=session, title=f"Report: {report.name}", view=report_view(report),
                  failures=failed, failures_from=failures)


# ---- suppressions
def search_suppressions(store: SuppressionStore, text: str, *, limit: int = SUPPRESSION_PAGE,
                        scan_cap: int = SEARCH_SCAN_CAP) -> tuple[list[Suppression], bool]:
    """Suppressions whose address contains ``text``, newest first; True when the scan stopped at its cap."""
    text = text.strip().lower()
    exact = store.get(text) if "@" in text else None
    found = [exact] if exact else []
    start = None
    scanned = 0
    while len(found) < limit:
        items, start = store.list(limit=500, start=start)
        scanned += len(items)
        found += [i for i in items if text in i.email and (exact is None or i.email != exact.email)]
        if not start:
            return found[:limit], False
        if scanned >= scan_cap:
            return found[:limit], True
    return found[:limit], False


@router.get("/suppressions", response_class=HTMLResponse)
def suppressions_page(request: Request, session: Auth, svc: Svc, q: str = "", cursor: str = "",
                      limit: Annotated[int, Query(ge=1, le=500)] = SUPPRESSION_PAGE) -> Response:
    """The newest suppressions ``limit`` at a time (``cursor``: where the previous page ended), or the ones
    whose address contains ``q``."""
    q = q.strip()[:320]
    next_cursor = None
    if q:
        items, capped = search_suppressions(svc.suppressions, q, limit=limit)
    else:
        try:
            if len(cursor) > MAX_CURSOR:
                raise InvalidCursor("cursor too long")
            page = svc.suppressions.page(limit=limit, cursor=cursor or None)
        except InvalidCursor:
            return render(request, "message.html", session=session, status=400, title="Bad request",
                          error="That link to more suppressions is not valid; open the suppression list again.")
        items, next_cursor, capped = page.items, page.next_cursor, False
    more = {"cursor": next_cursor, **({"limit": limit} if limit != SUPPRESSION_PAGE else {})}
    return render(request, "suppressions.html", session=session, title="Suppressions", items=items, q=q,
                  capped=capped, scan_cap=SEARCH_SCAN_CAP, page=limit, later=bool(cursor) and not q,
                  next_link=f"{_base(request)}/suppressions?{urlencode(more)}" if next_cursor else None)


# ---- message log
def _when(value: str, *, end: bool) -> datetime | None:
    """A form's date (``yyyy-mm-dd``: the whole day) or RFC 3339 time, as UTC; ValueError for anything else."""
    value = value.strip()
    if not value:
        return None
    if len(value) == 10:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
        return day + timedelta(days=1, microseconds=-1) if end else day
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/messages", response_class=HTMLResponse)
def messages_page(request: Request, session: Auth, svc: Svc,
                  to: Annotated[str, Query(max_length=320)] = "", tag: Annotated[str, Query(max_length=64)] = "",
                  status: Annotated[str, Query(max_length=20)] = "",
                  campaign_id: Annotated[str, Query(max_length=64)] = "",
                  since: Annotated[str, Query(max_length=40)] = "", until: Annotated[str, Query(max_length=40)] = "",
                  cursor: Annotated[str, Query(max_length=MAX_CURSOR)] = "") -> Response:
    """The message log's search (``GET /v1/messages``'s filters as a form), ``MESSAGE_PAGE`` a page."""
    form = {"to": to.strip(), "tag": tag.strip(), "status": status.strip(), "campaign_id": campaign_id.strip(),
            "since": since.strip(), "until": until.strip()}
    try:
        if form["status"] and form["status"] not in STATUSES:
            raise InvalidSearch(f"unknown status {form['status']!r}")
        if form["tag"] and not re.fullmatch(TAG_PATTERN, form["tag"]):
            raise InvalidSearch("a tag is 1-64 of A-Z a-z 0-9 _ . : -")
        try:
            window = _when(form["since"], end=False), _when(form["until"], end=True)
        except ValueError:
            raise InvalidSearch("since and until are dates (yyyy-mm-dd) or RFC 3339 times") from None
        query = LogFilter(to=form["to"] or None, tag=form["tag"] or None, campaign_id=form["campaign_id"] or None,
                          status=MessageStatus(form["status"]) if form["status"] else None,
                          since=window[0], until=window[1])
        items, next_cursor = open_log(svc).search(query, limit=MESSAGE_PAGE, cursor=cursor or None)
    except (InvalidSearch, InvalidCursor) as exc:
        return render(request, "messages.html", session=session, status=422, title="Messages", form=form,
                      statuses=STATUSES, items=[], next_link=None, later=False, error=str(exc))
    except MessageNotFound as exc:
        return render(request, "message.html", session=session, status=404, title="Not found", error=str(exc))
    more = {**{k: v for k, v in form.items() if v}, "cursor": next_cursor}
    return render(request, "messages.html", session=session, title="Messages", form=form, statuses=STATUSES,
                  items=items, later=bool(cursor),
                  next_link=f"{_base(request)}/messages?{urlencode(more)}" if next_cursor else None)


@router.get("/messages/{message_id}", response_class=HTMLResponse)
def message_page(request: Request, message_id: str, session: Auth, svc: Svc) -> Response:
    """One message and its timeline."""
    try:
        if len(message_id) > 200:
            raise MessageNotFound(message_id[:200])
        detail = open_log(svc).detail(message_id)
    except MessageNotFound:
        return render(request, "message.html", session=session, status=404, title="Not found",
                      error=f"There is no message {message_id}.")
    return render(request, "message_detail.html", session=session, title=f"Message {detail.id}", m=detail)


# ---- webhooks
WEBHOOK_DONE = {
    "enabled": "The endpoint is enabled again; replay below what it missed while it was off.",
    "disabled": "The endpoint is disabled: nothing is delivered to it until it is enabled again.",
    "already-disabled": "The endpoint was disabled already.",
    "deleted": "The endpoint was deleted; its delivery log expires with its retention.",
}


def _page_start(cursor: str, *, attributes: set[str], partition_ok: Callable[[str], bool]) -> dict[str, Any] | None:
    """Where the page a "next page" link of this dashboard names starts; InvalidCursor for any other value."""
    if not cursor:
        return None
    value = unpack(cursor)
    if not isinstance(value, dict) or set(value) != attributes or \
            not all(isinstance(v, str) for v in value.values()) or not partition_ok(value["pk"]):
        raise InvalidCursor("that link to the next page is not one this dashboard made")
    return resume_after(value)


def _page_cursor(last: dict[str, Any] | None) -> str | None:
    return pack(key_values(last)) if last else None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors())


def _endpoints_page(request: Request, session: Session, svc: Services, *, cursor: str = "", status: int = 200,
                    form: dict[str, Any] | None = None, error: str | None = None,
                    notice: str | None = None) -> Response:
    try:
        start = _page_start(cursor, attributes={"pk", "sk", "gsi1pk", "gsi1sk"},
                            partition_ok=lambda pk: pk.startswith(keys.webhook_partition("")))
    except InvalidCursor as exc:
        return render(request, "message.html", session=session, status=422, title="Bad request", error=str(exc))
    endpoints, last = svc.webhook_service.list_page(limit=ENDPOINT_PAGE, start=start)
    next_cursor = _page_cursor(last)
    return render(request, "webhooks.html", session=session, title="Webhooks", status=status, error=error,
                  notice=notice, endpoints=endpoints, event_types=EVENT_TYPES, later=bool(cursor),
                  form=form or {"url": "", "events": [], "category": "", "tag": "", "campaign_id": "",
                                "description": ""},
                  next_link=f"{_base(request)}/webhooks?{urlencode({'cursor': next_cursor})}" if next_cursor else None)


def _endpoint_page(request: Request, session: Session, svc: Services, endpoint_id: str, *, cursor: str = "",
                   status: int = 200, error: str | None = None, notice: str | None = None,
                   secret: str | None = None, replay: dict[str, str] | None = None) -> Response:
    """One endpoint, its actions and its delivery log, ``DELIVERY_PAGE`` attempts a page, newest first.
    ``secret`` is given only in the answer to the form that made it (create, rotate)."""
    try:
        if len(endpoint_id) > 64:
            raise EndpointNotFound(endpoint_id[:64])
        start = _page_start(cursor, attributes={"pk", "sk"},
                            partition_ok=lambda pk: pk == keys.webhook_partition(endpoint_id))
        endpoint = svc.webhook_service.get(endpoint_id)
        attempts, last = svc.webhook_service.attempts(endpoint_id, limit=DELIVERY_PAGE, start=start)
    except EndpointNotFound:
        return render(request, "message.html", session=session, status=404, title="Not found",
                      error=f"There is no webhook endpoint {endpoint_id}.")
    except InvalidCursor as exc:
        return render(request, "message.html", session=session, status=422, title="Bad request", error=str(exc))
    next_cursor = _page_cursor(last)
    more = f"{_base(request)}/webhooks/{endpoint.id}?{urlencode({'cursor': next_cursor})}" if next_cursor else None
    return render(request, "webhook.html", session=session, title=f"Webhook {endpoint.id}", status=status,
                  error=error, notice=notice, e=endpoint, attempts=attempts, secret=secret, later=bool(cursor),
                  next_link=more, replay=replay or {"since": "", "until": ""}, max_grace=MAX_GRACE_HOURS)


def _refused(request: Request, session: Session, csrf: str) -> bool:
    return _cross_site(request) or not csrf_ok(session, csrf)


@router.get("/webhooks", response_class=HTMLResponse)
def webhooks_page(request: Request, session: Auth, svc: Svc, done: Annotated[str, Query(max_length=20)] = "",
                  cursor: Annotated[str, Query(max_length=MAX_CURSOR)] = "") -> Response:
    """The endpoints, oldest first, ``ENDPOINT_PAGE`` a page, and the form that registers one."""
    return _endpoints_page(request, session, svc, cursor=cursor, notice=WEBHOOK_DONE.get(done))


@router.post("/webhooks", response_class=HTMLResponse)
def webhook_create(request: Request, session: Auth, svc: Svc, csrf: Csrf = "",
                   url: Annotated[str, Form()] = "", events: Annotated[list[str] | None, Form()] = None,
                   category: Annotated[str, Form()] = "", tag: Annotated[str, Form()] = "",
                   campaign_id: Annotated[str, Form()] = "", description: Annotated[str, Form()] = "") -> Response:
    """Register an endpoint; the answer is the only page that shows its signing secret."""
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    form = {"url": url.strip(), "events": events or [], "category": category.strip(), "tag": tag.strip(),
            "campaign_id": campaign_id.strip(), "description": description.strip()}
    try:
        body = EndpointCreate(url=form["url"], events=form["events"], description=form["description"] or None,
                              filter=EndpointFilter(category=form["category"] or None, tag=form["tag"] or None,
                                                    campaign_id=form["campaign_id"] or None))
    except ValidationError as exc:
        return _endpoints_page(request, session, svc, status=422, form=form,
                               error=f"The endpoint was not created ({_problems(exc)}).")
    endpoint = svc.webhook_service.create(body)
    return _endpoint_page(request, session, svc, endpoint.id, secret=endpoint.secret,
                          notice="Endpoint created. Copy its signing secret now: no page shows it again.")


@router.get("/webhooks/{endpoint_id}", response_class=HTMLResponse)
def webhook_page(request: Request, endpoint_id: str, session: Auth, svc: Svc,
                 done: Annotated[str, Query(max_length=20)] = "", replayed: int | None = None,
                 cursor: Annotated[str, Query(max_length=MAX_CURSOR)] = "") -> Response:
    notice = WEBHOOK_DONE.get(done)
    if replayed is not None:
        notice = f"{replayed} event(s) queued for delivery again; their attempts appear below as they run."
    return _endpoint_page(request, session, svc, endpoint_id, cursor=cursor, notice=notice)


def _done(request: Request, endpoint_id: str, done: str) -> Response:
    return RedirectResponse(f"{_base(request)}/webhooks/{endpoint_id}?done={done}", status_code=303)


def _missing(request: Request, session: Session, endpoint_id: str) -> Response:
    return render(request, "message.html", session=session, status=404, title="Not found",
                  error=f"There is no webhook endpoint {endpoint_id[:64]}.")


@router.post("/webhooks/{endpoint_id}/enable", response_class=HTMLResponse)
def webhook_enable(request: Request, endpoint_id: str, session: Auth, svc: Svc, csrf: Csrf = "") -> Response:
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    try:
        svc.webhook_service.update(endpoint_id, EndpointUpdate(enabled=True))
    except EndpointNotFound:
        return _missing(request, session, endpoint_id)
    return _done(request, endpoint_id, "enabled")


@router.post("/webhooks/{endpoint_id}/disable", response_class=HTMLResponse)
def webhook_disable(request: Request, endpoint_id: str, session: Auth, svc: Svc, csrf: Csrf = "") -> Response:
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    try:
        svc.webhook_service.get(endpoint_id)
    except EndpointNotFound:
        return _missing(request, session, endpoint_id)
    turned_off = svc.webhook_endpoints.disable(endpoint_id, reason="disabled in the dashboard")
    return _done(request, endpoint_id, "disabled" if turned_off else "already-disabled")


@router.post("/webhooks/{endpoint_id}/delete", response_class=HTMLResponse)
def webhook_delete(request: Request, endpoint_id: str, session: Auth, svc: Svc, csrf: Csrf = "") -> Response:
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    try:
        svc.webhook_service.delete(endpoint_id)
    except EndpointNotFound:
        return _missing(request, session, endpoint_id)
    return RedirectResponse(f"{_base(request)}/webhooks?done=deleted", status_code=303)


@router.post("/webhooks/{endpoint_id}/rotate", response_class=HTMLResponse)
def webhook_rotate(request: Request, endpoint_id: str, session: Auth, svc: Svc, csrf: Csrf = "",
                   grace_hours: Annotated[float, Form(ge=0, le=MAX_GRACE_HOURS)] = 24.0) -> Response:
    """A new secret, shown in this answer only; the old one keeps signing beside it for ``grace_hours``."""
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    try:
        endpoint = svc.webhook_service.rotate(endpoint_id, grace=timedelta(hours=grace_hours))
    except EndpointNotFound:
        return _missing(request, session, endpoint_id)
    kept = f"the previous one keeps signing beside it for {grace_hours:g} hour(s)" if grace_hours else \
        "the previous one no longer signs"
    return _endpoint_page(request, session, svc, endpoint.id, secret=endpoint.secret,
                          notice=f"New signing secret made; {kept}. Copy it now: no page shows it again.")


@router.post("/webhooks/{endpoint_id}/replay", response_class=HTMLResponse)
def webhook_replay(request: Request, endpoint_id: str, session: Auth, svc: Svc, csrf: Csrf = "",
                   event_id: Annotated[str, Form(max_length=64)] = "",
                   since: Annotated[str, Form(max_length=40)] = "",
                   until: Annotated[str, Form(max_length=40)] = "") -> Response:
    """Deliver again one logged event (``event_id``), or every event attempted between ``since`` and ``until``
    (dates or RFC 3339 times, UTC unless they say otherwise)."""
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    replay = {"since": since.strip(), "until": until.strip()}
    try:
        if event_id.strip():
            ids = svc.webhook_service.replay(endpoint_id, event_id=event_id.strip())
        else:
            try:
                window = _when(replay["since"], end=False), _when(replay["until"], end=True)
            except ValueError:
                raise ValueError("since and until are dates (yyyy-mm-dd) or RFC 3339 times") from None
            if window[0] is None:
                raise ValueError("give the start of the range (since), or replay one delivery")
            if window[1] is not None and window[1] < window[0]:
                raise ValueError("until is before since")
            ids = svc.webhook_service.replay(endpoint_id, since=window[0], until=window[1])
    except EndpointNotFound:
        return _missing(request, session, endpoint_id)
    except ValueError as exc:  # a bad range, or more than ReplayTooLarge allows
        return _endpoint_page(request, session, svc, endpoint_id, status=422, replay=replay,
                              error=f"Nothing was replayed: {exc}.")
    except LookupError as exc:
        return _endpoint_page(request, session, svc, endpoint_id, status=404, replay=replay,
                              error=f"Nothing was replayed: {exc}.")
    return RedirectResponse(f"{_base(request)}/webhooks/{endpoint_id}?replayed={len(ids)}", status_code=303)


# ---- lists
def _list_page(request: Request, session: Session, svc: Services, list_id: str, *, status: int = 200,
               form: dict[str, Any] | None = None, error: str | None = None,
               notice: str | None = None) -> Response:
    """One list: its public settings as a form, and the form snippet a web page embeds (public lists)."""
    from jetmail.api.intake import intake_for
    from jetmail.audience.intake import InvalidSubscription

    try:
        if len(list_id) > 64:
            raise ListNotFound(list_id[:64])
        mailing_list = svc.contacts.get_list(list_id)
    except ListNotFound:
        return render(request, "message.html", session=session, status=404, title="Not found",
                      error=f"There is no list {list_id[:64]}.")
    try:  # the snippet GET /v1/lists/{id}/form and `jetmail lists form` give
        snippet: str | None = intake_for(request.app).form_snippet(mailing_list)
    except InvalidSubscription:
        snippet = None
    shown = form or {"public": mailing_list.public, "title": mailing_list.title or "",
                     "description": mailing_list.description or "", "opt_in": mailing_list.opt_in,
                     "form_fields": ", ".join(mailing_list.form_fields)}
    return render(request, "list.html", session=session, title=f"List {mailing_list.name}", status=status,
                  error=error, notice=notice, lst=mailing_list, form=shown, snippet=snippet,
                  archive=f"{svc.settings.public_base_url.rstrip('/')}/archive/{mailing_list.public_id}")


@router.get("/lists", response_class=HTMLResponse)
def lists_page(request: Request, session: Auth, svc: Svc) -> Response:
    """Every list, oldest first, with whether it is public and how people join it."""
    return render(request, "lists.html", session=session, title="Lists", lists=svc.contacts.lists())


@router.get("/lists/{list_id}", response_class=HTMLResponse)
def list_page(request: Request, list_id: str, session: Auth, svc: Svc,
              done: Annotated[str, Query(max_length=20)] = "") -> Response:
    return _list_page(request, session, svc, list_id,
                      notice="The list's settings are saved." if done == "saved" else None)


@router.post("/lists/{list_id}", response_class=HTMLResponse)
def list_update(request: Request, list_id: str, session: Auth, svc: Svc, csrf: Csrf = "",
                public: Annotated[str, Form(max_length=10)] = "", title: Annotated[str, Form()] = "",
                description: Annotated[str, Form()] = "", opt_in: Annotated[str, Form(max_length=20)] = "double",
                form_fields: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """Change what subscribers see of a list and how they join it (``PATCH /v1/lists/{id}``'s fields but the
    name); an empty title or description clears it."""
    if _refused(request, session, csrf):
        return _forbidden(request, session)
    form: dict[str, Any] = {"public": bool(public), "title": title.strip(), "description": description.strip(),
                            "opt_in": opt_in.strip(), "form_fields": form_fields.strip()}
    try:
        body = ListUpdate(public=form["public"], title=form["title"] or None,
                          description=form["description"] or None, opt_in=form["opt_in"],
                          form_fields=[f for f in re.split(r"[\s,]+", form["form_fields"]) if f])
        svc.contacts.update_list(list_id, body)
    except ValidationError as exc:
        return _list_page(request, session, svc, list_id, status=422, form=form,
                          error=f"The settings were not saved ({_problems(exc)}).")
    except ListNotFound:
        return render(request, "message.html", session=session, status=404, title="Not found",
                      error=f"There is no list {list_id[:64]}.")
    return RedirectResponse(f"{_base(request)}/lists/{list_id}?done=saved", status_code=303)


# ---- dead letters
@router.get("/dlq", response_class=HTMLResponse)
def dlq_page(request: Request, session: Auth, svc: Svc, replayed: int | None = None) -> Response:
    letters = svc.queue.dlq_list(DLQ_PAGE)
    notice = f"Dead letter {replayed} was put back on its queue." if replayed is not None else None
    return render(request, "dlq.html", session=session, title="Dead letters", letters=letters,
                  total=svc.queue.dlq_count(), page=DLQ_PAGE, notice=notice)


@router.post("/dlq/{seq}/replay", response_class=HTMLResponse)
def dlq_replay(request: Request, seq: int, session: Auth, svc: Svc, csrf: Csrf = "") -> Response:
    if _cross_site(request) or not csrf_ok(session, csrf):
        return _forbidden(request, session)
    try:
        svc.queue.dlq_replay(seq)
    except NotFoundError as exc:
        return render(request, "message.html", session=session, status=404, title="Not found", error=str(exc))
    except QueueError as exc:
        return render(request, "message.html", session=session, status=409, title="Cannot replay", error=str(exc))
    return RedirectResponse(f"{_base(request)}/dlq?replayed={seq}", status_code=303)


# ---- sending
@router.get("/sending", response_class=HTMLResponse)
def sending_page(request: Request, session: Auth, svc: Svc, requeued: int | None = None) -> Response:
    notice = (f"Marketing sending resumed; {requeued} parked batch(es) re-enqueued."
              if requeued is not None else None)
    return render(request, "sending.html", session=session, title="Sending", status_info=sending.status(svc),
                  notice=notice)


@router.post("/sending/resume", response_class=HTMLResponse)
def sending_resume(request: Request, session: Auth, svc: Svc, csrf: Csrf = "") -> Response:
    if _cross_site(request) or not csrf_ok(session, csrf):
        return _forbidden(request, session)
    result = sending.resume(svc)
    return RedirectResponse(f"{_base(request)}/sending?requeued={int(result['requeued_batches'])}", status_code=303)


@router.get("/{rest:path}", response_class=HTMLResponse)
def not_found(request: Request, rest: str, session: Auth) -> Response:
    return render(request, "message.html", session=session, status=404, title="Not found",
                  error="There is no such dashboard page.")
