"""Typed settings, read once at the edge (CLI, Lambda module scope, worker start) and passed in.

Values come from environment variables prefixed ``JETMAIL_``, then from ``.env`` and from the
file the local stack writes (``.jetmail/dev/jetmail.env``) while it runs. Nothing below the edge
reads ``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ENV_FILE = ".jetmail/dev/jetmail.env"


class ConfigError(RuntimeError):
    """A required setting is missing or invalid; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JETMAIL_",
        env_file=(".env", DEV_ENV_FILE),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- NATS / job layer
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds_file: str | None = None
    stream_replicas: int = Field(default=1, ge=1, le=5)
    jobs_stream: str = "JOBS"
    dlq_stream: str = "JOBS_DLQ"
    duplicate_window_s: float = Field(default=3600.0, gt=0)

    # --- AWS (endpoint set locally to the moto server; unset in AWS)
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    table_name: str = Field(min_length=3)

    # --- delivery
    provider: Literal["smtp", "ses"] = "smtp"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_s: float = 10.0
    smtp_pool_size: int = Field(default=4, ge=1, le=64)
    smtp_max_messages_per_connection: int = Field(default=100, ge=1)
    ses_configuration_set: str | None = None

    # --- identity and links
    signing_secret: SecretStr = Field(min_length=16)
    public_base_url: str = "http://127.0.0.1:8000"
    default_from: str = "jetmail <noreply@example.com>"
    default_locale: str = "en"
    default_timezone: str = "UTC"
    company_name: str = "jetmail"
    company_address: str = "1 Example Street, 10115 Berlin, Germany"

    # --- API
    max_body_bytes: int = 256 * 1024


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a missing required value fails here with a clear message."""
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"JETMAIL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
