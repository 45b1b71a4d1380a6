"""Public link endpoints: open pixel, click redirect, unsubscribe page and RFC 8058 one-click.

These carry no API key (they are opened from inboxes); the HMAC-signed token in the path is their
authentication, and anything that does not verify is a 404.
"""

from __future__ import annotations

import base64
import html
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from jetmail.api.auth import services
from jetmail.services import Services

router = APIRouter(tags=["tracking"])
Svc = Annotated[Services, Depends(services)]
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache",
            "Expires": "0"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store"}


def _client(request: Request, svc: Services) -> tuple[str | None, str | None, str | None]:
    forwarded = request.headers.get("x-forwarded-for", "")
    ip = forwarded.split(",")[0].strip() or (request.client.host if request.client else None)
    country = request.headers.get(svc.settings.country_header)
    return request.headers.get("user-agent"), ip, (country or "").upper()[:2] or None


@router.get("/t/o/{token}", include_in_schema=False)
def open_pixel(token: str, request: Request, svc: Svc) -> Response:
    user_agent, ip, country = _client(request, svc)
    if not svc.tracker.open(token, user_agent=user_agent, ip=ip, country=country):
        raise HTTPException(404, "not found")
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{token}", include_in_schema=False)
def click(token: str, request: Request, svc: Svc) -> Response:
    user_agent, ip, country = _client(request, svc)
    target = svc.tracker.click(token, user_agent=user_agent, ip=ip, country=country)
    if target is None:
        raise HTTPException(404, "not found")
    return RedirectResponse(target, status_code=302, headers={"Cache-Control": "no-store"})


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
        "content='width=device-width,initial-scale=1'><title>" + html.escape(title) + "</title><style>"
        "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}"
        "button{font:inherit;padding:.5rem 1rem;margin:.25rem 0;border-radius:6px;border:1px solid #888;"
        "background:#fff;cursor:pointer}button.primary{background:#1f4fd1;color:#fff;border-color:#1f4fd1}"
        "</style></head><body>" + body + "</body></html>",
        headers=PAGE_HEADERS,
    )


@router.get("/u/{token}", include_in_schema=False)
def unsubscribe_page(token: str, svc: Svc) -> HTMLResponse:
    target = svc.tracker.unsubscribe_target(token)
    if target is None:
        raise HTTPException(404, "not found")
    who = html.escape(target.email)
    options = ""
    if target.list_id:
        options += "<p><button class=primary name=scope value=list>Unsubscribe from this list</button></p>"
    options += "<p><button name=scope value=all" + ("" if target.list_id else " class=primary") + \
        ">Unsubscribe from all emails</button></p>"
    return _page("Unsubscribe", f"<h1>Unsubscribe</h1><p>Stop emails to <strong>{who}</strong>?</p>"
                                f"<form method=post>{options}</form>")


@router.post("/u/{token}", include_in_schema=False)
async def unsubscribe(token: str, request: Request, svc: Svc) -> Response:
    target = svc.tracker.unsubscribe_target(token)
    if target is None:
        raise HTTPException(404, "not found")
    form = (await request.body())[:2048].decode("utf-8", errors="replace")
    if "List-Unsubscribe=One-Click" in form:
        # RFC 8058: the mailbox provider posts this; unsubscribe at once, no page
        svc.tracker.unsubscribe(target, everything=target.list_id is None)
        return Response(status_code=200)
    everything = "scope=all" in form or target.list_id is None
    svc.tracker.unsubscribe(target, everything=everything)
    scope = "all emails" if everything else "this list"
    return _page("Unsubscribed", f"<h1>You are unsubscribed</h1><p>{html.escape(target.email)} will no longer "
                                 f"receive {scope} from {html.escape(svc.settings.company_name)}.</p>")
