"""Public subscription routes: ``POST /subscribe/{public id}`` and the double opt-in confirmation page.

No API key (a web page's form posts here): the list's public id names the list, and the confirmation link's
signed token names the request. Protected by a per-client-address and a per-email-address request limit (the
API's request limiter, ``ApiThrottle``), a honeypot field and an optional challenge (``jetmail.audience.intake``).
Every accepted request gets the same answer, whatever became of it. A GET never changes anything: link
scanners fetch every link of a mail, so confirming takes the page's POST button.
"""

from __future__ import annotations

import hashlib
import html
import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from jetmail.api.auth import services
from jetmail.api.errors import problem_response
from jetmail.api.throttle import ApiThrottle
from jetmail.audience.intake import Intake, InvalidSubscription, make_challenge
from jetmail.audience.model import ListNotFound
from jetmail.services import Services

router = APIRouter(tags=["subscriptions"])
Svc = Annotated[Services, Depends(services)]
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
LANGUAGES = ("en", "de")
TEXT: dict[str, dict[str, str]] = {
    "en": {
        "check_title": "Check your inbox",
        "check": "Thank you. To finish subscribing to {list}, follow the link in the email we have sent you.",
        "single_title": "Thank you",
        "single": "Thank you for subscribing to {list}. If we need you to confirm, you will find an email "
                  "from us in your inbox.",
        "confirm_title": "Confirm your subscription",
        "confirm": "Confirm that {email} wants to receive {list}.",
        "confirm_button": "Confirm subscription",
        "done_title": "You are subscribed",
        "done": "{email} now receives {list}. You can unsubscribe from any of our emails.",
        "gone_title": "Link not valid",
        "gone": "This confirmation link is not valid any more. Please subscribe again.",
        "missing_title": "Not found",
        "missing": "There is no such subscription form.",
        "invalid_title": "Please check your entry",
        "slow_title": "Too many requests",
        "slow": "Please wait a minute and try again.",
    },
    "de": {
        "check_title": "Bitte bestätige deine Anmeldung",
        "check": "Danke. Um dich für {list} anzumelden, folge dem Link in der E-Mail, die wir dir geschickt haben.",
        "single_title": "Danke",
        "single": "Danke für deine Anmeldung zu {list}. Falls wir eine Bestätigung brauchen, findest du eine "
                  "E-Mail von uns in deinem Posteingang.",
        "confirm_title": "Anmeldung bestätigen",
        "confirm": "Bestätige, dass {email} {list} erhalten möchte.",
        "confirm_button": "Anmeldung bestätigen",
        "done_title": "Du bist angemeldet",
        "done": "{email} erhält jetzt {list}. Du kannst dich in jeder unserer E-Mails abmelden.",
        "gone_title": "Link ungültig",
        "gone": "Dieser Bestätigungslink ist nicht mehr gültig. Bitte melde dich erneut an.",
        "missing_title": "Nicht gefunden",
        "missing": "Dieses Anmeldeformular gibt es nicht.",
        "invalid_title": "Bitte prüfe deine Eingabe",
        "slow_title": "Zu viele Anfragen",
        "slow": "Bitte warte eine Minute und versuche es noch einmal.",
    },
}


def intake(request: Request) -> Intake:
    return intake_for(request.app)


def intake_for(app: Any) -> Intake:
    """The app's one ``Intake``, made on first use."""
    made: Intake | None = getattr(app.state, "intake", None)
    if made is None:
        svc: Services = app.state.services
        settings = svc.settings
        made = Intake(contacts=svc.contacts, mailer=svc.messages, signer=svc.signer, audit=svc.audit,
                      pseudonym=svc.pseudonyms.pseudonym, base_url=settings.public_base_url,
                      consent_ip=settings.consent_ip, expiry_days=settings.pending_expiry_days,
                      default_locale=settings.default_locale,
                      challenge=make_challenge(settings.subscribe_challenge, bits=settings.subscribe_pow_bits,
                                               settings=settings))
        app.state.intake = made
    return made


IntakeDep = Annotated[Intake, Depends(intake)]


def language(request: Request) -> str:
    """The page language: the first of en and de the browser asks for (Accept-Language, by weight), else en."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(request.headers.get("accept-language", "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                weight = 0.0
        ranked.append((-weight, position, tag.strip().split("-")[0].lower()))
    for _, _, tag in sorted(ranked):
        if tag in LANGUAGES:
            return tag
    return "en"


def page(lang: str, title: str, body: str, *, status: int = 200, headers: dict[str, str] | None = None,
         ) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang={lang}><head><meta charset=utf-8><meta name=viewport "
        "content='width=device-width,initial-scale=1'><title>" + html.escape(title) + "</title><style>"
        "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}"
        "button{font:inherit;padding:.5rem 1rem;border-radius:6px;border:1px solid #1f4fd1;background:#1f4fd1;"
        "color:#fff;cursor:pointer}button:focus-visible{outline:3px solid #f5a623;outline-offset:2px}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def _client_ip(request: Request) -> str | None:
    forwarded = request.headers.get("x-forwarded-for", "")
    return forwarded.split(",")[0].strip() or (request.client.host if request.client else None)


def _counter(kind: str, value: str) -> str:
    # a digest: the limiter's counter names allow [A-Za-z0-9_-], and the KV bucket holds no addresses
    return f"sub{kind}-" + hashlib.sha256(value.lower().encode()).hexdigest()[:24]


async def _fields(request: Request) -> tuple[dict[str, Any], bool]:
    """The posted fields and whether the request is JSON (answered in JSON) rather than a form."""
    body = await request.body()
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        try:
            value = json.loads(body or b"null")
        except ValueError:
            raise InvalidSubscription("the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise InvalidSubscription("the body must be a JSON object")
        return value, True
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise InvalidSubscription("the form could not be read") from None
    return dict(pairs), False


def _too_many(wait: int, lang: str, as_json: bool) -> Response:
    headers = {"Retry-After": str(wait)}
    if as_json:
        return problem_response(429, f"too many subscribe requests; retry in {wait}s", headers=headers)
    return page(lang, TEXT[lang]["slow_title"], f"<p>{TEXT[lang]['slow']}</p>", status=429, headers=headers)


# a form post is answered with a page, JSON with JSON (problem+json for errors)
_ERROR_CONTENT: dict[str, Any] = {"application/problem+json": {}, "text/html": {}}


@router.post("/subscribe/{public_id}", status_code=200,
             response_class=HTMLResponse,
             responses={200: {"description": "accepted (form post): a page saying what happens next",
                              "content": {"text/html": {}}},
                        202: {"description": "accepted (JSON): the same answer whatever became of it",
                              "content": {"application/json": {}}},
                        404: {"description": "no public list has this id", "content": _ERROR_CONTENT},
                        422: {"description": "a bad address or field, or the form's check did not pass",
                              "content": _ERROR_CONTENT},
                        429: {"description": "too many requests from this client or for this address",
                              "content": _ERROR_CONTENT}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                 "application/json": {"schema": {"type": "object"}}}}})
async def subscribe(public_id: str, request: Request, svc: Svc, desk: IntakeDep) -> Response:
    """Subscribe to a public list from a web form (``application/x-www-form-urlencoded``, answered with a page in
    the browser's language) or JSON (answered 202 in JSON): ``email``, optional ``name``, ``source`` (the
    page's URL; else the Referer) and the list's allowed attributes. Double opt-in lists send a confirmation
    mail first. No API key."""
    lang = language(request)
    as_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
    throttle: ApiThrottle = request.app.state.throttle
    ip = _client_ip(request)
    settings = svc.settings
    if ip and (wait := throttle.take(_counter("ip", ip), settings.subscribe_rate_per_ip)):
        return _too_many(wait, lang, as_json)
    try:
        fields, as_json = await _fields(request)
        mailing_list = svc.contacts.public_list(public_id)
        email = str(fields.get("email") or "").strip()
        if email and (wait := throttle.take(_counter("addr", email), settings.subscribe_rate_per_address)):
            return _too_many(wait, lang, as_json)
        # the browser's language becomes the contact's only when the browser named one
        asked = lang if request.headers.get("accept-language") else None
        desk.subscribe(mailing_list, fields, ip=ip, referer=request.headers.get("referer"), language=asked)
    except ListNotFound:
        if as_json:
            return problem_response(404, "no such public list")
        return page(lang, TEXT[lang]["missing_title"], f"<p>{TEXT[lang]['missing']}</p>", status=404)
    except InvalidSubscription as exc:
        if as_json:
            return problem_response(422, str(exc))
        return page(lang, TEXT[lang]["invalid_title"], f"<p>{html.escape(str(exc))}</p>", status=422)
    name = html.escape(mailing_list.display_name)
    double = mailing_list.opt_in == "double"
    if as_json:
        return JSONResponse({"status": "accepted", "confirmation": "double" if double else "single"},
                            status_code=202)
    key = "check" if double else "single"
    return page(lang, TEXT[lang][f"{key}_title"], f"<p>{TEXT[lang][key].format(list=f'<strong>{name}</strong>')}</p>")


@router.get("/confirm/{token}", include_in_schema=False)
def confirm_page(token: str, request: Request, desk: IntakeDep) -> HTMLResponse:
    """Shows what the link confirms and a button that does; changes nothing (link scanners fetch GETs)."""
    lang = language(request)
    found = desk.confirmation(token)
    mailing_list = desk.list_of(found) if found is not None else None
    if found is None or mailing_list is None:
        return page(lang, TEXT[lang]["gone_title"], f"<p>{TEXT[lang]['gone']}</p>", status=404)
    text = TEXT[lang]["confirm"].format(email=f"<strong>{html.escape(found.email)}</strong>",
                                        list=f"<strong>{html.escape(mailing_list.display_name)}</strong>")
    return page(lang, TEXT[lang]["confirm_title"],
                f"<p>{text}</p><form method=post><button type=submit>{TEXT[lang]['confirm_button']}</button></form>")


@router.post("/confirm/{token}", include_in_schema=False)
def confirm(token: str, request: Request, desk: IntakeDep) -> HTMLResponse:
    """Moves the subscription from pending to subscribed; confirming twice answers the same."""
    lang = language(request)
    done = desk.confirm(token)
    if done is None:
        return page(lang, TEXT[lang]["gone_title"], f"<p>{TEXT[lang]['gone']}</p>", status=404)
    found, mailing_list = done
    text = TEXT[lang]["done"].format(email=f"<strong>{html.escape(found.email)}</strong>",
                                     list=f"<strong>{html.escape(mailing_list.display_name)}</strong>")
    return page(lang, TEXT[lang]["done_title"], f"<p>{text}</p>")
