"""Turn a template version and a recipient into the bytes that go to the provider.

Everything a message needs besides the caller's context is added here, once, for every send path
(transactional, sequence steps, campaigns, preview): unsubscribe, preference centre and view-in-browser URLs,
tracking pixel and click tracking for marketing mail, the date in the recipient's time zone, company details.
"""

from __future__ import annotations

import html as html_escape
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import ChainableUndefined

from jetmail.audience.addresses import InvalidAddress
from jetmail.campaigns.ids import parse_campaign_message_id
from jetmail.config import Settings
from jetmail.messaging.mime import BuiltMessage, MimeAttachment, build_message, check_custom_headers, parse_address
from jetmail.messaging.templating import Company, RenderedEmail, Renderer, StandardContext, TemplateVersion
from jetmail.messaging.templating import Recipient as ContextRecipient
from jetmail.messaging.templating.errors import (
    ReservedContextKeyError,
    TemplateRenderError,
    TemplateTimeoutError,
    TemplateValidationError,
)
from jetmail.messaging.tokens import Signer

UNSUBSCRIBE_PURPOSE = "unsubscribe"
OPEN_PURPOSE = "open"
CLICK_PURPOSE = "click"
SAMPLE_RECIPIENT = "recipient@example.com"
CHECK_MESSAGE_ID = "compliance-check"
#: seconds the check of a send may render for (:meth:`Composer.require_sendable`); a render that needs longer
#: is left to the worker and its full budget (``JETMAIL_RENDER_TIMEOUT_S``), so a request never waits for it
SUBMIT_RENDER_TIMEOUT_S = 0.1


class SenderNotAllowed(InvalidAddress):
    """A From address outside the verified identities (``JETMAIL_ALLOWED_FROM``)."""


@dataclass
class ComplianceProblem:
    """What a marketing template lacks; ``field`` is ``<template>/<locale>``."""

    field: str
    message: str
    template: str
    locale: str
    missing: list[str] = dataclass_field(default_factory=list)
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class NotCompliant(TemplateValidationError):
    """Marketing mail whose template does not render an unsubscribe link and the postal address."""


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


class _AnyAttributes(dict[str, Any]):
    """The ``attributes`` of a check that is not about one contact: every name renders empty."""

    def __missing__(self, key: str) -> Any:
        return ChainableUndefined(name=key)


class Composer:
    def __init__(self, settings: Settings, *, renderer: Renderer | None = None, signer: Signer | None = None) -> None:
        self.settings = settings
        self.renderer = renderer or Renderer(limits=settings.render_limits)
        self.signer = signer or Signer(settings.signing_secret)
        self.base_url = settings.public_base_url.rstrip("/")
        self.company = Company(name=settings.company_name, address=settings.company_address)
        _, from_address = parse_address(settings.default_from)
        self.message_id_domain = from_address.rsplit("@", 1)[-1]
        allowed = [a.strip().lower().lstrip("@") for a in settings.allowed_from if a.strip()]
        self.allowed_addresses = frozenset(a for a in allowed if "@" in a)
        self.allowed_domains = frozenset(a for a in allowed if "@" not in a) or (
            frozenset() if allowed else frozenset({self.message_id_domain.lower()}))
        self._checked: dict[tuple[Any, ...], tuple[ComplianceProblem, ...]] = {}

    # ---- sender identity
    def check_from(self, from_header: str | None) -> None:
        """Raise SenderNotAllowed unless the address (or its domain) is an allowed identity. Empty
        ``JETMAIL_ALLOWED_FROM``: any address at the default From address's domain."""
        if from_header is None:
            return
        try:
            _, address = parse_address(from_header)
        except ValueError as exc:
            raise InvalidAddress(f"invalid From address: {exc}") from None
        address = address.lower()
        if address in self.allowed_addresses or address.rpartition("@")[2] in self.allowed_domains:
            return
        allowed = sorted(self.allowed_addresses | self.allowed_domains)
        raise SenderNotAllowed(f"From address {address!r} is not a verified sender (allowed: {', '.join(allowed)}; "
                               "set JETMAIL_ALLOWED_FROM)")

    # ---- bulk-sender rules
    def compliance_problems(self, version: TemplateVersion, context: dict[str, Any] | None = None
                            ) -> tuple[ComplianceProblem, ...]:
        """Render a marketing version for a sample recipient and report what the law and the mailbox
        providers require but the output lacks: the unsubscribe link (``{{ unsubscribe_url }}``) and
        the sender's postal address (``{{ company.address }}``). Transactional versions need neither.
        ``context``: a campaign's, rendered alone as the campaign's sends are (a variable it lacks is a
        problem) with any contact attribute rendering empty; with none, the version's ``sample_context``,
        and the result is cached per version."""
        if (version.category or "transactional") != "marketing":
            return ()
        cache_key = (*version.key, version.category)
        if context is None and cache_key in self._checked:
            return self._checked[cache_key]
        if context is None:
            values: dict[str, Any] = {"attributes": {}, **version.sample_context}
            source = "its sample_context"
        else:
            values = {**context, "attributes": _AnyAttributes()}
            source = "the campaign's context"
        name = version.name.split("~", 1)[0]  # a campaign's copy of a version carries a suffix
        label = f"{name}/{version.locale}"
        problems: list[ComplianceProblem] = []
        try:
            rendered = self.render(version, values, recipient=Recipient(email=SAMPLE_RECIPIENT, name="Sample"),
                                   message_id=CHECK_MESSAGE_ID, track=False)
        except TemplateValidationError as exc:
            lacks = "unsubscribe link ({{ unsubscribe_url }})" if "unsubscribe_url" in str(exc) else "valid template"
            problems.append(ComplianceProblem(
                field=label, template=name, locale=version.locale, missing=[lacks],
                message=f"marketing template is invalid: {exc}"))
        except (TemplateRenderError, ReservedContextKeyError) as exc:
            where = "" if not isinstance(exc, TemplateRenderError) else \
                f"{exc.field}: " if exc.line is None else f"{exc.field} line {exc.line}: "
            reason = exc.reason if isinstance(exc, TemplateRenderError) else str(exc)
            problems.append(ComplianceProblem(
                field=label, template=name, locale=version.locale, missing=["context"],
                message=f"does not render with {source}: {where}{reason}"))
        else:
            missing = self._lacks(rendered, email=SAMPLE_RECIPIENT)
            if missing:
                problems.append(self._lacking(version, missing))
        result = tuple(problems)
        if context is None:
            self._checked[cache_key] = result
        return result

    def require_sendable(self, version: TemplateVersion, context: dict[str, Any], *, to: str, name: str | None = None,
                         language: str | None = None, timezone: str | None = None) -> None:
        """Render ``version`` for ``to`` (``name``, ``language``, ``timezone``: the recipient's) with exactly
        ``context``, as the worker will send it, so that a send the worker could only fail is refused when it is
        made. Raises TemplateRenderError (a variable the context lacks, a render limit, unsafe HTML),
        ReservedContextKeyError, TemplateValidationError, and for a marketing version NotCompliant. One render:
        ~0.3 ms for the shipped templates; one still running after SUBMIT_RENDER_TIMEOUT_S passes unchecked."""
        recipient = Recipient(email=to, name=name, language=language, timezone=timezone)
        try:
            rendered = self.render(version, context, recipient=recipient, message_id=CHECK_MESSAGE_ID, track=False,
                                   timeout_s=min(SUBMIT_RENDER_TIMEOUT_S, self.renderer.limits.timeout_s))
        except TemplateTimeoutError:
            return
        if (version.category or "transactional") == "marketing":
            missing = self._lacks(rendered, email=to)
            if missing:
                raise NotCompliant([self._lacking(version, missing)])

    def _lacks(self, rendered: RenderedEmail, *, email: str) -> list[str]:
        """What of the unsubscribe link and the postal address a rendered marketing message lacks."""
        body = rendered.html + "\n" + (rendered.text or "")
        missing = []
        if self.unsubscribe_url(message_id=CHECK_MESSAGE_ID, email=email) not in body:
            missing.append("unsubscribe link ({{ unsubscribe_url }})")
        address = self.settings.company_address.strip()
        if not address or (address not in body and html_escape.escape(address) not in body):
            missing.append("postal address ({{ company.address }})" if address else
                           "postal address (JETMAIL_COMPANY_ADDRESS is empty)")
        return missing

    @staticmethod
    def _lacking(version: TemplateVersion, missing: list[str]) -> ComplianceProblem:
        name = version.name.split("~", 1)[0]  # a campaign's copy of a version carries a suffix
        return ComplianceProblem(field=f"{name}/{version.locale}", template=name, locale=version.locale,
                                 missing=missing, message=f"marketing template lacks the {' and the '.join(missing)}")

    def require_compliant(self, versions: Iterable[TemplateVersion], context: dict[str, Any] | None = None) -> None:
        """Raise NotCompliant listing every version (template and locale) that lacks something."""
        problems = [p for version in versions for p in self.compliance_problems(version, context)]
        if problems:
            raise NotCompliant(problems)

    # ---- links
    def unsubscribe_url(self, *, message_id: str, email: str, list_id: str | None = None) -> str:
        payload: dict[str, Any] = {"m": message_id, "e": email}
        if list_id:
            payload["l"] = list_id
        return f"{self.base_url}/u/{self.signer.sign(UNSUBSCRIBE_PURPOSE, payload)}"

    def page_urls(self, unsubscribe_url: str, *, message_id: str) -> tuple[str | None, str | None]:
        """The preference centre and view-in-browser links of the message whose unsubscribe link is
        ``unsubscribe_url``. They carry its very token (``/p/<token>``, ``/v/<token>``): no second HMAC per
        recipient, and whoever holds one of the three links holds the mail they came in. (None, None) for
        a link not made here; no view-in-browser link for a message that is not a campaign's (its copy is
        rendered from the campaign's batch)."""
        prefix = f"{self.base_url}/u/"
        if not unsubscribe_url.startswith(prefix):
            return None, None
        token = unsubscribe_url[len(prefix):]
        view = f"{self.base_url}/v/{token}" if parse_campaign_message_id(message_id) else None
        return f"{self.base_url}/p/{token}", view

    def open_url(self, *, message_id: str) -> str:
        return f"{self.base_url}/t/o/{self.signer.sign(OPEN_PURPOSE, {'m': message_id})}"

    def click_url(self, *, message_id: str, index: int, url: str) -> str:
        # the target URL is inside the signed payload: a redirect can only lead where the email pointed
        return f"{self.base_url}/t/c/{self.signer.sign(CLICK_PURPOSE, {'m': message_id, 'i': index, 'u': url})}"

    # ---- rendering
    def render(self, version: TemplateVersion, context: dict[str, Any], *, recipient: Recipient, message_id: str,
               list_id: str | None = None, track: bool | None = None, now: datetime | None = None,
               unsubscribe_url: str | None = None, fixed_layouts: bool = False,
               timeout_s: float | None = None, varying: frozenset[str] | None = None,
               stencil_only: bool = False) -> RenderedEmail:
        """``unsubscribe_url``: this message's link (``unsubscribe_url()``), when the caller has it already;
        ``fixed_layouts``, ``timeout_s``, ``varying``, ``stencil_only``: see
        :meth:`~jetmail.messaging.templating.Renderer.render`."""
        marketing = (version.category or "transactional") == "marketing"
        track = marketing if track is None else track
        zone = _zone(recipient.timezone, self.settings.default_timezone)
        unsubscribe_url = unsubscribe_url or self.unsubscribe_url(message_id=message_id, email=recipient.email,
                                                                  list_id=list_id)
        preferences_url, view_in_browser_url = self.page_urls(unsubscribe_url, message_id=message_id)
        standard = StandardContext(
            unsubscribe_url=unsubscribe_url, preferences_url=preferences_url, view_in_browser_url=view_in_browser_url,
            tracking_pixel_url=self.open_url(message_id=message_id) if track else None,
            now=(now or datetime.now(UTC)).astimezone(zone),
            company=self.company,
            recipient=ContextRecipient(email=recipient.email, name=recipient.name or "",
                                       language=recipient.language or version.locale, timezone=str(zone)),
        )
        rewriter = None
        if track:
            def rewriter(index: int, url: str) -> str:
                return self.click_url(message_id=message_id, index=index, url=url)
        return self.renderer.render(version, context, standard=standard, link_rewriter=rewriter,
                                    fixed_layouts=fixed_layouts, timeout_s=timeout_s, varying=varying,
                                    stencil_only=stencil_only)

    def preview(self, version: TemplateVersion, context: dict[str, Any], *, to: str, name: str | None) -> RenderedEmail:
        return self.render(version, context, recipient=Recipient(email=to, name=name), message_id="preview",
                           track=False)

    # ---- MIME
    def message_id_header(self, message_id: str) -> str:
        return f"<{message_id}@{self.message_id_domain}>"

    def build(self, rendered: RenderedEmail, *, message_id: str, recipient: Recipient, from_addr: str | None = None,
              reply_to: str | None = None, list_unsubscribe: str | None = None,
              headers: dict[str, str] | None = None, cc: Sequence[str] = (), bcc: Sequence[str] = (),
              attachments: Sequence[MimeAttachment] = (), text_only: bool = False) -> BuiltMessage:
        """``headers``: the caller's own fields (checked at submit with ``check_custom_headers``); jetmail's
        are written after them and cannot be replaced. ``text_only``: send the text part alone."""
        if headers:
            check_custom_headers(headers)
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
            html=None if text_only else rendered.html,
            text=rendered.text,
            message_id=self.message_id_header(message_id),
            reply_to=reply_to,
            headers=extra,
            cc=cc,
            bcc=bcc,
            attachments=attachments,
        )
