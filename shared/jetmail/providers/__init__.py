"""Mail providers: the ``Provider`` interface delivery uses, and its SMTP and Amazon SES adapters."""

from __future__ import annotations

from jetmail.config import ConfigError, Settings
from jetmail.providers.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    Provider,
    SendResult,
    TemporaryDeliveryError,
)
from jetmail.providers.ses import SesProvider
from jetmail.providers.smtp import SmtpProvider

__all__ = [
    "DeliveryError",
    "OutboundMessage",
    "PermanentDeliveryError",
    "Provider",
    "SendResult",
    "SesProvider",
    "SmtpProvider",
    "TemporaryDeliveryError",
    "make_provider",
]


def make_provider(settings: Settings) -> Provider:
    """The provider ``settings.provider`` names: one per process, made at start-up, closed at shutdown."""
    if settings.provider == "smtp":
        return SmtpProvider(settings)
    if settings.provider == "ses":
        return SesProvider(settings)
    raise ConfigError(f"JETMAIL_PROVIDER: unknown provider {settings.provider!r} (smtp or ses)")
