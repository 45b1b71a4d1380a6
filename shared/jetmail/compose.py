"""Turn a template version and a recipient into the bytes that go to the provider.

Everything a message needs besides the caller's context is added here, once, for every send path
(transactional, sequence steps, campaigns, preview): unsubscribe URL, tracking pixel and click
tracking for marketing mail, the date in the recipient's time zone, company details.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jetmail.config import Settings
from jetmail.mime import BuiltMessage, build_message, parse_address
from jetmail.templating import RenderedEmail, Renderer, StandardContext, TemplateVersion
from jetmail.tokens import Signer

UNSUBSCRIBE_PURPOSE = "unsubscribe"
OPEN_PURPOSE = "open"
CLICK_PURPOSE = "click"


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str | None = None
    language: str | None = None
    timezone: str | None = None


def _zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


class Composer:
    def __init__(self, settings: Settings, *, renderer: Renderer | None = None, signer: Signer | None = None) -> None:
        self.settings = settings
        self.renderer = renderer or Renderer()
        self.signer = signer or Signer(settings.signing_secret)
        self.base_url = settings.public_base_url.rstrip("/")
        self.company = {"name": settings.company_name, "address": settings.company_address}
        _, from_address = parse_address(settings.default_from)
        self.message_id_domain = from_address.rsplit("@", 1)[-1]

    # ---- links
    def unsubscribe_url(self, *, message_id: str, email: str, list_id: str | None = None) -> str:
        payload: dict[str, Any] = {"m": message_id, "e": email}
        if list_id:
            payload["l"] = list_id
        return f"{self.base_url}/u/{self.signer.sign(UNSUBSCRIBE_PURPOSE, payload)}"

    def open_url(self, *, message_id: str) -> str:
        return f"{self.base_url}/t/o/{self.signer.sign(OPEN_PURPOSE, {'m': message_id})}"

    def click_url(self, *, message_id: str, index: int, url: str) -> str:
        # the target URL is inside the signed payload: a redirect can only lead where the email pointed
        return f"{self.base_url}/t/c/{self.signer.sign(CLICK_PURPOSE, {'m': message_id, 'i': index, 'u': url})}"

    # ---- rendering
    def render(self, version: TemplateVersion, context: dict[str, Any], *, recipient: Recipient, message_id: str,
               list_id: str | None = None, track: bool | None = None, now: datetime | None = None) -> RenderedEmail:
        marketing = (version.category or "transactional") == "marketing"
        track = marketing if track is None else track
        zone = _zone(recipient.timezone, self.settings.default_timezone)
        standard = StandardContext(
            unsubscribe_url=self.unsubscribe_url(message_id=message_id, email=recipient.email, list_id=list_id),
            tracking_pixel_url=self.open_url(message_id=message_id) if track else None,
            now=(now or datetime.now(UTC)).astimezone(zone),
            company=self.company,
            recipient={"email": recipient.email, "name": recipient.name or "", "language": recipient.language or
                       version.locale, "timezone": str(zone)},
        )
        rewriter = None
        if track:
            def rewriter(index: int, url: str) -> str:
                return self.click_url(message_id=message_id, index=index, url=url)
        return self.renderer.render(version, context, standard=standard, link_rewriter=rewriter)

    def preview(self, version: TemplateVersion, context: dict[str, Any], *, to: str, name: str | None) -> RenderedEmail:
        return self.render(version, context, recipient=Recipient(email=to, name=name), message_id="preview",
                           track=False)

    # ---- MIME
    def message_id_header(self, message_id: str) -> str:
        return f"<{message_id}@{self.message_id_domain}>"

    def build(self, rendered: RenderedEmail, *, message_id: str, recipient: Recipient, from_addr: str | None = None,
              reply_to: str | None = None, list_unsubscribe: str | None = None,
              headers: dict[str, str] | None = None) -> BuiltMessage:
        extra = dict(headers or {})
        if list_unsubscribe:
            # RFC 8058 one-click: mailbox providers POST "List-Unsubscribe=One-Click" to this URL
            extra["List-Unsubscribe"] = f"<{list_unsubscribe}>"
            extra["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        extra["X-Jetmail-Message-Id"] = message_id
        to = (recipient.name, recipient.email) if recipient.name else recipient.email
        return build_message(
            from_addr=from_addr or self.settings.default_from,
            to=to,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id=self.message_id_header(message_id),
            reply_to=reply_to,
            headers=extra,
        )
