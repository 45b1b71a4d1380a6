"""Public pages a subscriber opens from a mail or a website: the preference centre (``/p/<token>``), one
recipient's copy of a campaign mail (``/v/<token>``) and a public list's campaign archive (``/archive/...``).

Like the unsubscribe page (``jetmail.api.tracking``) they carry no API key: ``/p`` and ``/v`` are
authenticated by the signed token of the mail's unsubscribe link, the archive is public. A GET never
changes anything (link scanners fetch every link of a mail); the preference centre's POSTs carry a CSRF
token. Pages are in English or German: the contact's language for ``/p``, the browser's (Accept-Language)
for the archive, English otherwise. A bad token or an unknown page is a 404 page, an expired form a 403 page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs
from xml.etree import ElementTree

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from jetmail.api.auth import services
from jetmail.services import Services

logger = logging.getLogger("jetmail.api")
router = APIRouter(include_in_schema=False, tags=["pages"])
Svc = Annotated[Services, Depends(services)]
HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 * 1024
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                           "base-uri 'none'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
                "X-Robots-Tag": "noindex"}
# a mail's HTML shown as a page: its images and styles load, nothing runs, no form posts anywhere, and the
# address bar (a signed link for /v) never leaks to the sites its links lead to
MAIL_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src https: http: data: cid:; "
                                           "style-src 'unsafe-inline' https:; font-src https: data:; "
                                           "form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "prefs_title": "Your email preferences",
        "prefs_intro": "Choose which emails {email} receives from {company}.",
        "lists_legend": "Lists",
        "status_pending": "awaiting your confirmation",
        "no_lists": "There are no lists to choose from.",
        "save": "Save preferences",
        "all_legend": "Unsubscribe from everything",
        "all_text": "Stop every marketing email from {company} to this address.",
        "all_button": "Unsubscribe from everything",
        "data_legend": "Your data",
        "data_text": "Get a copy of everything we hold about this address, mailed to it as a JSON file.",
        "data_button": "Send me my data",
        "saved_title": "Preferences saved",
        "saved_text": "Your choices are saved.",
        "saved_pending": "Check your inbox: confirm each list you joined with the link we sent.",
        "save_failed": "Your choices could not be saved for this address.",
        "all_title": "You are unsubscribed",
        "all_done": "{email} will no longer receive marketing emails from {company}.",
        "data_title": "Your data is on its way",
        "data_done": "We are mailing a copy of your data to {email}.",
        "data_failed": "Your data could not be mailed right now. Please try again later.",
        "back": "Back to your preferences",
        "expired_title": "This form has expired",
        "expired_text": "Open the page again from the link in your email and repeat your change.",
        "invalid_title": "This link is not valid",
        "invalid_text": "The link is incomplete or no longer available. Use the link in your most recent email.",
        "archive_title": "{name}: past emails",
        "archive_empty": "No emails yet.",
        "archive_feed": "Subscribe to the Atom feed",
        "mail_subject": "Your data at {company}",
        "mail_text": "As you asked, attached is everything {company} holds about this address, as a JSON file.",
    },
    "de": {
        "prefs_title": "Ihre E-Mail-Einstellungen",
        "prefs_intro": "Wählen Sie, welche E-Mails {email} von {company} erhält.",
        "lists_legend": "Listen",
        "status_pending": "wartet auf Ihre Bestätigung",
        "no_lists": "Es gibt keine Listen zur Auswahl.",
        "save": "Einstellungen speichern",
        "all_legend": "Von allem abmelden",
        "all_text": "Keine Marketing-E-Mails von {company} mehr an diese Adresse.",
        "all_button": "Von allem abmelden",
        "data_legend": "Ihre Daten",
        "data_text": "Eine Kopie aller Daten, die wir zu dieser Adresse speichern, als JSON-Datei an sie gesendet.",
        "data_button": "Meine Daten zusenden",
        "saved_title": "Einstellungen gespeichert",
        "saved_text": "Ihre Auswahl ist gespeichert.",
        "saved_pending": "Bitte sehen Sie in Ihr Postfach: Bestätigen Sie jede neue Liste über den gesendeten Link.",
        "save_failed": "Ihre Auswahl konnte für diese Adresse nicht gespeichert werden.",
        "all_title": "Sie sind abgemeldet",
        "all_done": "{email} erhält keine Marketing-E-Mails von {company} mehr.",
        "data_title": "Ihre Daten sind unterwegs",
        "data_done": "Wir senden eine Kopie Ihrer Daten an {email}.",
        "data_failed": "Ihre Daten konnten gerade nicht gesendet werden. Bitte versuchen Sie es später erneut.",
        "back": "Zurück zu Ihren Einstellungen",
        "expired_title": "Dieses Formular ist abgelaufen",
        "expired_text": "Öffnen Sie die Seite erneut über den Link in Ihrer E-Mail und wiederholen Sie die Änderung.",
        "invalid_title": "Dieser Link ist ungültig",
        "invalid_text": "Der Link ist unvollständig oder nicht mehr verfügbar. Nutzen Sie den Link aus Ihrer "
                        "neuesten E-Mail.",
        "archive_title": "{name}: frühere E-Mails",
        "archive_empty": "Noch keine E-Mails.",
        "archive_feed": "Atom-Feed abonnieren",
        "mail_subject": "Ihre Daten bei {company}",
        "mail_text": "Wie gewünscht finden Sie im Anhang alle Daten, die {company} zu dieser Adresse speichert, "
                     "als JSON-Datei.",
    },
}
DEFAULT_LANGUAGE = "en"


def language(*candidates: str | None) -> str:
    """The first candidate whose primary subtag has pages (``de-AT`` → ``de``), else English."""
    for candidate in candidates:
        primary = (candidate or "").split("-")[0].split("_")[0].strip().lower()
        if primary in TEXT:
            return primary
    return DEFAULT_LANGUAGE


def accepted(request: Request) -> list[str]:
    """The Accept-Language tags, most wanted first."""
    ranked = []
    for i, part in enumerate(request.headers.get("accept-language", "")[:200].split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag))
    return [tag for _, _, tag in sorted(ranked)]


@cache
def templates() -> Environment:
    return Environment(loader=FileSystemLoader(HERE / "page_templates"), autoescape=select_autoescape(default=True),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def page(svc: Services, name: str, *, lang: str, title: str, status: int = 200, **context: Any) -> HTMLResponse:
    settings = svc.settings
    context.setdefault("feed_url", None)
    body = templates().get_template(name).render(lang=lang, t=TEXT[lang], title=title, company=settings.company_name,
                                                 address=settings.company_address, **context)
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def message(svc: Services, *, lang: str, title: str, lines: list[str], status: int = 200,
            back: str | None = None) -> HTMLResponse:
    return page(svc, "message.html", lang=lang, title=title, lines=lines, status=status, back=back)


def invalid(svc: Services, lang: str) -> HTMLResponse:
    t = TEXT[lang]
    return message(svc, lang=lang, title=t["invalid_title"], lines=[t["invalid_text"]], status=404)


async def form(request: Request) -> dict[str, list[str]]:
    """A form post's fields (``application/x-www-form-urlencoded``); none for a body over 16 KiB. Read here so the
    route itself runs on a worker thread: its DynamoDB calls must not hold up the event loop."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=200)


Form = Annotated[dict[str, list[str]], Depends(form)]


def client_ip(request: Request) -> str | None:
    forwarded = request.headers.get("x-forwarded-for", "")
    return forwarded.split(",")[0].strip() or (request.client.host if request.client else None)


# ---- preference centre
def _centre(request: Request, svc: Services) -> Any:
    from jetmail.compliance.preferences import PreferenceCentre

    def mail(*, to: str, subject: str, text: str, filename: str, data: bytes, idempotency_key: str) -> None:
        import base64

        from jetmail.messaging.messages import AttachmentIn, SendRequest

        request = SendRequest(to=to, subject=subject, text=text, attachments=[AttachmentIn(
            filename=filename, content_type="application/json", content=base64.b64encode(data).decode())])
        svc.messages.submit(request, idempotency_key=idempotency_key)

    return PreferenceCentre(contacts=svc.contacts, intake=_intake(request, svc), privacy=svc.privacy, mailer=mail,
                            signer=svc.signer)


def _intake(request: Request, svc: Services) -> Any:
    """The audience intake as the subscribe form uses it (``jetmail.api.intake``), without the form's challenge:
    a preference centre request is authenticated by its token and CSRF token. Made once per app."""
    made = getattr(request.app.state, "preferences_intake", None)
    if made is None:
        from jetmail.audience.intake import Intake

        settings = svc.settings
        made = Intake(contacts=svc.contacts, mailer=svc.messages, signer=svc.signer, audit=svc.audit,
                      pseudonym=svc.pseudonyms.pseudonym, base_url=settings.public_base_url,
                      consent_ip=settings.consent_ip, expiry_days=settings.pending_expiry_days,
                      default_locale=settings.default_locale)
        request.app.state.preferences_intake = made
    return made


@router.get("/p/{token}")
def preferences(token: str, request: Request, svc: Svc) -> HTMLResponse:
    target = svc.tracker.unsubscribe_target(token)
    if target is None:
        return invalid(svc, language(*accepted(request)))
    centre = _centre(request, svc)
    contact = centre.contact(target.email)
    lang = language(contact.language if contact else None, *accepted(request))
    return page(svc, "preferences.html", lang=lang, title=TEXT[lang]["prefs_title"], email=target.email,
                choices=centre.choices(contact), csrf=centre.csrf.issue(token))


@router.post("/p/{token}")
def change_preferences(token: str, request: Request, svc: Svc, fields: Form) -> HTMLResponse:
    target = svc.tracker.unsubscribe_target(token)
    if target is None:
        return invalid(svc, language(*accepted(request)))
    centre = _centre(request, svc)
    contact = centre.contact(target.email)
    lang = language(contact.language if contact else None, *accepted(request))
    t, company, back = TEXT[lang], svc.settings.company_name, str(request.url)
    if not centre.csrf.valid(token, (fields.get("csrf") or [""])[0]):
        return message(svc, lang=lang, title=t["expired_title"], lines=[t["expired_text"]], status=403, back=back)
    action = (fields.get("action") or ["save"])[0]
    if action == "all":
        svc.tracker.unsubscribe(target, everything=True)
        return message(svc, lang=lang, title=t["all_title"], back=back,
                       lines=[t["all_done"].format(email=target.email, company=company)])
    if action == "data":
        try:
            centre.send_data(target.email, subject=t["mail_subject"].format(company=company),
                             text=t["mail_text"].format(company=company) + "\n")
        except ValueError:  # no attachment store here, an export over the attachment limit: logged, and said
            logger.exception("preference centre: cannot mail the data export")
            return message(svc, lang=lang, title=t["data_title"], lines=[t["data_failed"]], status=503, back=back)
        return message(svc, lang=lang, title=t["data_title"], back=back,
                       lines=[t["data_done"].format(email=target.email)])
    if action != "save":
        return message(svc, lang=lang, title=t["invalid_title"], lines=[t["invalid_text"]], status=400, back=back)
    try:
        saved = centre.save(target.email, fields.get("list", []), ip=client_ip(request),
                            source_url=str(request.url.replace(path=request.url.path.rsplit("/", 1)[0])))
    except ValueError as exc:  # an address erased at its owner's request cannot join a list again
        logger.info("preference centre: not saved: %s", exc)
        return message(svc, lang=lang, title=t["invalid_title"], lines=[t["save_failed"]], status=422, back=back)
    lines = [t["saved_text"]] + ([t["saved_pending"]] if saved.joined else [])
    return message(svc, lang=lang, title=t["saved_title"], lines=lines, back=back)


# ---- view in browser
@router.get("/v/{token}")
def view_in_browser(token: str, request: Request, svc: Svc) -> HTMLResponse:
    from jetmail.campaigns.archive import NoCopy

    target = svc.tracker.unsubscribe_target(token)
    if target is None:
        return invalid(svc, language(*accepted(request)))
    try:
        rendered = _archive(svc).recipient_copy(target.message_id, target.email)
    except NoCopy:
        return invalid(svc, language(*accepted(request)))
    return HTMLResponse(rendered.html, headers={**MAIL_HEADERS, "Cache-Control": "no-store"})


# ---- campaign archive
def _archive(svc: Services) -> Any:
    from jetmail.campaigns.archive import CampaignArchive

    return CampaignArchive(store=svc.campaign_store, templates=svc.templates, composer=svc.composer)


def _public_list(svc: Services, public_id: str) -> Any:
    from jetmail.audience.model import ListNotFound

    try:
        return svc.contacts.public_list(public_id)
    except ListNotFound:
        return None


def _archive_url(svc: Services, public_id: str) -> str:
    return f"{svc.settings.public_base_url.rstrip('/')}/archive/{public_id}"


@router.get("/archive/{public_id}")
def archive_index(public_id: str, request: Request, svc: Svc) -> HTMLResponse:
    lang = language(*accepted(request))
    mailing_list = _public_list(svc, public_id)
    if mailing_list is None:
        return invalid(svc, lang)
    base = _archive_url(svc, public_id)
    return page(svc, "archive.html", lang=lang, title=TEXT[lang]["archive_title"].format(
        name=mailing_list.display_name), description=mailing_list.description, base=base,
        entries=_archive(svc).entries(mailing_list.id, link=base), feed_url=f"{base}/feed.atom")


@router.get("/archive/{public_id}/feed.atom")
def archive_feed(public_id: str, request: Request, svc: Svc) -> Response:
    lang = language(*accepted(request))
    mailing_list = _public_list(svc, public_id)
    if mailing_list is None:
        return invalid(svc, lang)
    base = _archive_url(svc, public_id)
    entries = _archive(svc).entries(mailing_list.id, link=base)
    return Response(atom_feed(title=TEXT[lang]["archive_title"].format(name=mailing_list.display_name),
                              subtitle=mailing_list.description, base=base, author=svc.settings.company_name,
                              entries=[{"id": e.campaign_id, "title": e.subject, "updated": e.sent_at}
                                       for e in entries]),
                    media_type="application/atom+xml; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


@router.get("/archive/{public_id}/{campaign_id}")
def archived_campaign(public_id: str, campaign_id: str, request: Request, svc: Svc) -> HTMLResponse:
    from jetmail.campaigns.archive import NotArchived

    lang = language(*accepted(request))
    mailing_list = _public_list(svc, public_id)
    if mailing_list is None:
        return invalid(svc, lang)
    base = _archive_url(svc, public_id)
    try:
        _, rendered = _archive(svc).render_archived(campaign_id, mailing_list.id, link=base)
    except NotArchived:
        return invalid(svc, lang)
    return HTMLResponse(rendered.html, headers={**MAIL_HEADERS, "Cache-Control": "public, max-age=300"})


def atom_feed(*, title: str, subtitle: str | None, base: str, author: str,
              entries: list[Mapping[str, str]]) -> bytes:
    """An Atom 1.0 document (RFC 4287) of the archive's entries, newest first."""
    ns = "http://www.w3.org/2005/Atom"
    ElementTree.register_namespace("", ns)
    feed = ElementTree.Element(f"{{{ns}}}feed")

    def add(parent: ElementTree.Element, tag: str, text: str | None = None, **attrs: str) -> ElementTree.Element:
        element = ElementTree.SubElement(parent, f"{{{ns}}}{tag}", attrs)
        element.text = text
        return element

    add(feed, "title", title)
    if subtitle:
        add(feed, "subtitle", subtitle)
    add(feed, "id", base)
    add(feed, "link", rel="self", type="application/atom+xml", href=f"{base}/feed.atom")
    add(feed, "link", rel="alternate", type="text/html", href=base)
    add(feed, "updated", entries[0]["updated"] if entries else datetime.now(UTC).isoformat())
    add(add(feed, "author"), "name", author)
    for entry in entries:
        item = add(feed, "entry")
        add(item, "title", entry["title"])
        add(item, "id", f"{base}/{entry['id']}")
        add(item, "link", rel="alternate", type="text/html", href=f"{base}/{entry['id']}")
        add(item, "updated", entry["updated"])
    return bytes(ElementTree.tostring(feed, encoding="utf-8", xml_declaration=True))
