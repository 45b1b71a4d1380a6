"""The server-rendered dashboard under ``/dashboard``: log in with an admin API key, then read campaigns
and their reports (with their permanent failures), the message log (search, and a message's timeline), the
suppression list, dead letters (and replay them) and the sending status (and resume marketing after a
reputation stop). Plain HTML forms; no JavaScript is needed to read or act."""

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

from jetmail.api.auth import services as _services
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
from jetmail.storage.cursors import InvalidCursor

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
