"""Mail providers: the ``Provider`` interface delivery uses, and its SMTP and Amazon SES adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jetmail.config import ConfigError, Settings
from jetmail.messaging.providers.base import (
    DeliveryError,
    OutboundMessage,
    PermanentDeliveryError,
    Provider,
    SendResult,
    TemporaryDeliveryError,
)

if TYPE_CHECKING:
    from jetmail.messaging.providers.ses import SesProvider
    from jetmail.messaging.providers.smtp import SmtpProvider

# The adapters load on first use: the Lambda functions import the interface (through the rate limiter and
# jetmail.observability) but never send, and the adapters bring boto3 and aiosmtplib (docs/PERFORMANCE.md).
_ADAPTERS = {"SesProvider": "jetmail.messaging.providers.ses", "SmtpProvider": "jetmail.messaging.providers.smtp"}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        import importlib

        return getattr(importlib.import_module(_ADAPTERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
        from jetmail.messaging.providers.smtp import SmtpProvider

        return SmtpProvider(settings)
    if settings.provider == "ses":
        from jetmail.messaging.providers.ses import SesProvider

        return SesProvider(settings)
    raise ConfigError(f"JETMAIL_PROVIDER: unknown provider {settings.provider!r} (smtp or ses)")
