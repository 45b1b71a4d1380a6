"""Template domain models: stored content, the per-recipient standard context, render output."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from jetmail.messaging.templating.locales import normalize_locale

Category = Literal["transactional", "marketing"]
TemplateName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
LocaleTag = Annotated[str, Field(max_length=35), AfterValidator(normalize_locale)]

#: Names every render fills in; a caller context must not use them.
STANDARD_NAMES = frozenset({"unsubscribe_url", "preferences_url", "view_in_browser_url", "company", "today", "now",
                            "recipient"})


class TemplateContent(BaseModel):
    """One translation of a template as authored: Jinja sources for subject, HTML and text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TemplateName
    locale: LocaleTag
    subject: str = Field(min_length=1, max_length=998)
    html: str = Field(min_length=1, max_length=1_000_000)
    text: str | None = Field(default=None, max_length=1_000_000)
    category: Category = "transactional"
    description: str = Field(default="", max_length=500)
    #: Values for every caller variable the template uses; previews render with them.
    sample_context: dict[str, JsonValue] = Field(default_factory=dict)


class TemplateVersion(TemplateContent):
    """Stored content is immutable: an edit creates the next version."""

    version: int = Field(ge=1)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.name, self.version, self.locale)


class Company(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    address: str


class Recipient(BaseModel):
    model_config = ConfigDict(frozen=True)

    email: str
    name: str | None = None
    language: str | None = None
    timezone: str = "UTC"


class StandardContext(BaseModel):
    """What the platform adds to every render, built per recipient by the sender."""

    model_config = ConfigDict(frozen=True)

    #: Already converted to the recipient's timezone.
    now: AwareDatetime
    company: Company
    recipient: Recipient
    unsubscribe_url: str | None = None
    #: The preference centre and this recipient's copy in a browser (``/p/...``, ``/v/...``).
    preferences_url: str | None = None
    view_in_browser_url: str | None = None
    #: Appended as a 1x1 image to marketing mail only; transactional mail is never tracked.
    tracking_pixel_url: str | None = None
    #: ``strftime`` format of ``today``, the recipient's date (time directives read midnight); numeric by
    #: default because month names would follow the process locale, not the recipient's.
    date_format: str = "%Y-%m-%d"

    @property
    def today(self) -> str:
        return _day(self.now.date(), self.date_format)

    def variables(self) -> dict[str, Any]:
        """The standard names as templates see them."""
        return {
            "unsubscribe_url": self.unsubscribe_url,
            "preferences_url": self.preferences_url or "",
            "view_in_browser_url": self.view_in_browser_url or "",
            "company": {"name": self.company.name, "address": self.company.address},
            "recipient": {
                "email": self.recipient.email,
                "name": self.recipient.name,
                "language": self.recipient.language,
                "timezone": self.recipient.timezone,
            },
            "now": self.now,
            "today": self.today,
        }


@lru_cache(maxsize=64)
def _day(day: date, date_format: str) -> str:
    """A day as ``today`` shows it, worked out once per day and format: every campaign recipient's render asks,
    and ``strftime`` takes eight times as long as the cached answer."""
    return day.strftime(date_format)


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """One recipient's message content; ``links`` are the original click-tracked URLs by index."""

    subject: str
    html: str
    text: str
    links: tuple[str, ...] = field(default=())
