"""Campaign mail shown in a browser: a public list's archive, and one recipient's own copy ("view in browser").

Nothing here is stored per recipient. The archive renders a campaign marked ``archive`` with its
``archive_context`` (or its template's sample context) in place of any recipient's data; a recipient's
copy is rendered again on request from the campaign and the recipient's row in the planned batch the
message id names (``cm_<campaign>_<run>_<batch>_<position>``): what that batch sent them, read with one
GetItem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from jetmail.campaigns.ids import parse_campaign_message_id
from jetmail.campaigns.model import (
    ABResult,
    AudienceSource,
    BatchRecipient,
    CampaignCreate,
    CampaignState,
    Variant,
)
from jetmail.campaigns.store import CampaignNotFound, CampaignStore
from jetmail.messaging.compose import SAMPLE_RECIPIENT, Recipient
from jetmail.messaging.templating import STANDARD_NAMES, RenderedEmail, TemplateRenderError, TemplateVersion

#: what a campaign that no longer renders raises: its template deleted, a value its template cannot take
UNRENDERABLE = (LookupError, ValueError, TemplateRenderError)

logger = logging.getLogger("jetmail.campaigns")
#: how many of the newest campaigns an archive looks through
ARCHIVE_SCAN = 500
#: how many an archive shows at most
ARCHIVE_ENTRIES = 50
ARCHIVE_MESSAGE_ID = "archive"


class NotArchived(LookupError):
    """No such campaign in this archive: unknown, not marked ``archive``, not sent, or not to this list."""


class NoCopy(LookupError):
    """The message is not campaign mail, or its batch (with the recipient's details) is gone."""


class Templates(Protocol):
    """``jetmail.messaging.templates.TemplateStore``."""

    def resolve(self, name: str, locale: str | None) -> TemplateVersion: ...


class Renderer(Protocol):
    """``jetmail.messaging.compose.Composer``."""

    def render(self, version: TemplateVersion, context: dict[str, Any], *, recipient: Recipient, message_id: str,
               list_id: str | None = None, track: bool | None = None,
               unsubscribe_url: str | None = None) -> RenderedEmail: ...


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    campaign_id: str
    name: str
    subject: str
    sent_at: str


def _lists(sources: list[AudienceSource]) -> set[str]:
    return {s.list_id for s in sources if s.list_id}


def content(templates: Templates, campaign: CampaignCreate, variant: Variant | None,
            locale: str | None) -> TemplateVersion:
    """The version a recipient of this variant and locale got, as marketing mail with the campaign's subject,
    renamed as the batch sender renames it: its compiled copy stays apart from the stored template's."""
    template = (variant.template if variant and variant.template else None) or campaign.template
    version = templates.resolve(template, locale)
    subject = (variant.subject if variant and variant.subject else None) or campaign.subject
    label = variant.name if variant else "campaign"
    update: dict[str, Any] = {"category": "marketing", "name": f"{version.name}~{label}"}
    if subject:
        update["subject"] = subject
    return version.model_copy(update=update)


class CampaignArchive:
    def __init__(self, *, store: CampaignStore, templates: Templates, composer: Renderer) -> None:
        self.store = store
        self.templates = templates
        self.composer = composer

    # ---- a list's public archive
    def entries(self, list_id: str, *, link: str) -> list[ArchiveEntry]:
        """The list's archived, sent campaigns, newest first, each with its subject as the archive renders it
        (one Query of the newest campaigns, one render per entry, ``ARCHIVE_ENTRIES`` at most)."""
        out = []
        for item in self.store.list(limit=ARCHIVE_SCAN):
            if item.get("state") != CampaignState.SENT:
                continue
            definition = self.store.definition(item)
            if definition.archive and list_id in _lists(definition.audience):
                try:
                    out.append(self._render(item, definition, link=link)[0])
                except UNRENDERABLE as exc:
                    logger.warning("archive: campaign %s does not render: %s", item["id"], exc)
                    continue
                if len(out) == ARCHIVE_ENTRIES:
                    break
        return out

    def _archived(self, campaign_id: str, list_id: str) -> tuple[dict[str, Any], CampaignCreate]:
        try:
            item = self.store.get(campaign_id, consistent=False)
        except CampaignNotFound:
            raise NotArchived(campaign_id) from None
        definition = self.store.definition(item)
        if item.get("state") != CampaignState.SENT or not definition.archive \
                or list_id not in _lists(definition.audience):
            raise NotArchived(campaign_id)
        return item, definition

    @staticmethod
    def _variant(item: dict[str, Any], definition: CampaignCreate) -> Variant | None:
        """The A/B winner, whose copy most of the audience got; None without a test or a winner."""
        if definition.ab_test is None or not item.get("ab"):
            return None
        winner = ABResult.model_validate_json(item["ab"]).winner
        return next((v for v in definition.ab_test.variants if v.name == winner), None)

    def render_archived(self, campaign_id: str, list_id: str, *, link: str) -> tuple[ArchiveEntry, RenderedEmail]:
        """The archived copy: no recipient, the archive values in place of theirs, no tracking; ``link`` (the
        archive's own page) stands in for the recipient's unsubscribe link. Raises NotArchived."""
        item, definition = self._archived(campaign_id, list_id)
        try:
            return self._render(item, definition, link=link)
        except UNRENDERABLE as exc:
            logger.warning("archive: campaign %s does not render: %s", campaign_id, exc)
            raise NotArchived(campaign_id) from None

    def _render(self, item: dict[str, Any], definition: CampaignCreate, *, link: str
                ) -> tuple[ArchiveEntry, RenderedEmail]:
        version = content(self.templates, definition, self._variant(item, definition), None)
        values = definition.archive_context if definition.archive_context is not None else version.sample_context
        context: dict[str, Any] = {k: v for k, v in {**definition.context, **values}.items()
                                   if k not in STANDARD_NAMES}
        context.setdefault("attributes", {})
        rendered = self.composer.render(version, context, recipient=Recipient(email=SAMPLE_RECIPIENT, name=""),
                                        message_id=ARCHIVE_MESSAGE_ID, track=False, unsubscribe_url=link)
        entry = ArchiveEntry(campaign_id=item["id"], name=item["name"], subject=rendered.subject,
                             sent_at=item.get("finished_at") or item.get("started_at") or item["created_at"])
        return entry, rendered

    # ---- one recipient's copy
    def recipient_copy(self, message_id: str, email: str) -> RenderedEmail:
        """What campaign message ``message_id`` to ``email`` showed, rendered again without tracking (its links
        lead straight to their targets; nothing is counted). Raises NoCopy."""
        parsed = parse_campaign_message_id(message_id)
        if parsed is None:
            raise NoCopy(message_id)
        campaign_id, run, batch, position = parsed
        record = self.store.batch_record(campaign_id, run=run, batch=batch)
        if record is None:
            raise NoCopy(message_id)
        if position >= len(record.recipients) or record.recipients[position].email.lower() != email.lower():
            raise NoCopy(message_id)
        try:
            definition = self.store.definition(self.store.get(campaign_id, consistent=False))
        except CampaignNotFound:
            raise NoCopy(message_id) from None
        variant = next((v for v in definition.ab_test.variants if v.name == record.variant), None) \
            if definition.ab_test and record.variant else None
        try:
            return self._render_for(definition, variant, record.recipients[position], message_id)
        except UNRENDERABLE as exc:
            logger.warning("view in browser: %s does not render: %s", message_id, exc)
            raise NoCopy(message_id) from None

    def _render_for(self, definition: CampaignCreate, variant: Variant | None, recipient: BatchRecipient,
                    message_id: str) -> RenderedEmail:
        version = content(self.templates, definition, variant, recipient.language)
        to = Recipient(email=recipient.email, name=recipient.name, language=recipient.language,
                       timezone=recipient.timezone)
        return self.composer.render(version, {**definition.context, "attributes": recipient.attributes},
                                    recipient=to, message_id=message_id, list_id=recipient.list_id, track=False)
