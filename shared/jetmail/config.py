"""Typed settings, read once at the edge (CLI, Lambda module scope, worker start) and passed in.

Values come from environment variables prefixed ``JETMAIL_``, then from ``.env`` and from the
file the local stack writes (``.jetmail/dev/jetmail.env``) while it runs. Nothing below the edge
reads ``os.environ``.
"""

from __future__ import annotations

import json
import re
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from jetmail.templating.limits import RenderLimits

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
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    # TLS to nats-server with a private CA (NATS TLS CA): a PEM file path, or the PEM itself, which Lambda reads
    # from Secrets Manager through JETMAIL_NATS_TLS_CA_SECRET_ARN
    nats_tls_ca_file: str | None = None
    nats_tls_ca_pem: str | None = None
    stream_replicas: int = Field(default=1, ge=1, le=5)
    jobs_stream: str = "JOBS"
    dlq_stream: str = "JOBS_DLQ"
    # suppressions, unsubscribes and erasures as events (jetmail.stops): what running campaigns follow
    stops_stream: str = "STOPS"
    duplicate_window_s: float = Field(default=3600.0, gt=0)

    # --- AWS (endpoint set locally to the moto server; unset in AWS)
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    # Static credentials for that endpoint. The local stack writes its own (its moto server accepts
    # any) so that every `jetmail` command works in a shell without AWS variables; unset in AWS, where
    # the function's or task's role supplies them through the SDK's default chain.
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    # seconds an AWS call may wait for its reply before the SDK gives up (and, but for SES, retries)
    aws_read_timeout_s: float = Field(default=10.0, gt=0, le=120)
    table_name: str = Field(min_length=3)
    # events and engagement counters; by default the main table's name + "-stats"
    stats_table_name: str | None = Field(default=None, min_length=3)

    # --- delivery
    provider: Literal["smtp", "ses"] = "smtp"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_s: float = 10.0
    # campaign sends in flight per worker process, across all its batches (8 per batch at most)
    campaign_sends_per_worker: int = Field(default=32, ge=1, le=1000)
    smtp_pool_size: int = Field(default=4, ge=1, le=64)
    smtp_max_messages_per_connection: int = Field(default=100, ge=1)
    ses_configuration_set: str | None = None
    # the local SES mailbox simulator (on in the local stack): see jetmail.simulator
    ses_simulator: bool = False
    # RFC 2920: MAIL, RCPT and DATA in one write when the server offers PIPELINING (off: one command
    # per round trip, for a relay that advertises it but mishandles it)
    smtp_pipelining: bool = True
    simulator_domain: str | None = "simulator.jetmail.local"

    # --- sending rate (jetmail.ratelimit); 0 means no limit for that window. The defaults are the
    # quota SES gives an account out of the sandbox: set them to your provider's limits.
    rate_per_second: float = Field(default=14.0, ge=0)
    rate_per_minute: int = Field(default=0, ge=0)
    rate_per_hour: int = Field(default=0, ge=0)
    rate_per_day: int = Field(default=50000, ge=0)
    # messages per minute per recipient domain: JSON object or "gmail.com=600,yahoo.com=300"
    rate_domain_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"gmail.com": 600, "yahoo.com": 300, "outlook.com": 300})
    rate_transactional_share: float = Field(default=0.2, ge=0, lt=1)
    rate_window_guard_s: float = Field(default=0.05, ge=0, le=0.5)
    rate_throttle_factor: float = Field(default=0.5, gt=0, lt=1)
    rate_throttle_floor: float = Field(default=1.0, gt=0)
    rate_recovery_step: float = Field(default=0.05, gt=0, le=1)
    rate_recovery_interval_s: float = Field(default=10.0, gt=0)
    # daily marketing caps from rate_warmup_start (UTC days): JSON list or "200,500,1000"
    rate_warmup_schedule: Annotated[list[int], NoDecode] = Field(default_factory=list)
    rate_warmup_start: date | None = None

    # --- identity and links
    signing_secret: SecretStr = Field(min_length=16)
    public_base_url: str = "http://127.0.0.1:8000"
    default_from: str = "jetmail <noreply@example.com>"
    default_locale: str = "en"
    default_timezone: str = "UTC"
    company_name: str = "jetmail"
    company_address: str = "1 Example Street, 10115 Berlin, Germany"
    # From addresses mail may be sent from: addresses (noreply@example.com) and whole domains
    # (example.com), comma separated or a JSON list; empty: any address at default_from's domain
    allowed_from: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- API
    max_body_bytes: int = 256 * 1024
    # requests per minute per API key (0: no limit); a key's own limit (`jetmail keys limit`) replaces it
    api_rate_per_minute: int = Field(default=600, ge=0)
    # seconds an API process keeps a token's verdict (the key, or a refusal): revocation, rotation and
    # limit changes made elsewhere reach a warm API container within this; 0 reads the key every request
    api_key_cache_s: float = Field(default=5.0, ge=0, le=60)
    # seconds a process (API, worker) keeps a template's head (its latest version per locale): a template
    # saved elsewhere is used for new sends within this; 0 reads the head for every message
    template_cache_s: float = Field(default=5.0, ge=0, le=300)
    # browser origins allowed to call the API (CORS), comma separated or a JSON list; empty: no CORS headers
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    country_header: str = "cloudfront-viewer-country"

    # --- SMTP submission server (`jetmail smtp-server`, jetmail.submission): applications send with an API key
    submission_host: str = "0.0.0.0"  # noqa: S104 - a server for other machines; the NLB fronts it in AWS
    # STARTTLS (required before AUTH) and implicit TLS; 0 turns a port off
    submission_port: int = Field(default=587, ge=0, le=65535)
    submission_tls_port: int = Field(default=465, ge=0, le=65535)
    # PEM certificate chain and key; unset: `jetmail smtp-server` refuses to start (the local stack makes its own)
    submission_cert_file: str | None = None
    submission_key_file: str | None = None
    submission_hostname: str = "localhost"  # named in the greeting and the EHLO reply
    # bytes of one message as sent (552 above it); bodies wait for the worker in a JetStream object store
    submission_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    submission_max_recipients: int = Field(default=50, ge=1, le=1000)
    # seconds a client may stay silent between commands, and the whole of one DATA (421 after it)
    submission_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    submission_max_connections_per_ip: int = Field(default=20, ge=1)
    # hours an accepted body is kept for the worker, retries included (the object store bucket's TTL)
    submission_retention_hours: int = Field(default=72, ge=1, le=24 * 30)

    # --- template rendering limits (jetmail.templating.limits), per render of one message; saving a
    # template test-renders its sample_context under the same limits
    # characters per part (subject, HTML, text) and per value a template builds on the way
    render_max_output_chars: int = Field(default=2_000_000, ge=1000)
    # seconds for all parts of one render
    render_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # loop iterations, calls and filters in one render
    render_max_iterations: int = Field(default=1_000_000, ge=1000)
    # nested blocks in a template source, and nested macro calls while rendering
    render_max_depth: int = Field(default=32, ge=4, le=200)

    # --- SNS (SES events over an HTTPS subscription; POST /sns/ses)
    # Topics whose messages the HTTPS route accepts and whose subscriptions it confirms; comma
    # separated or a JSON list. Empty: the route refuses everything (SNS -> Lambda needs none).
    sns_topic_arns: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sns_cert_host_pattern: str = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
    # A folder of trusted signing certificates, ``<sha256 of the SigningCertURL>.pem``, used before
    # fetching: for a network without egress, and for tests with a locally made certificate.
    sns_cert_cache_dir: str | None = None
    # SNS retries resend the original message and Timestamp: raise this if a custom delivery
    # policy retries for longer than an hour.
    sns_max_age_s: float = Field(default=3600.0, gt=0)

    # --- CloudWatch metrics from the scheduler tick (QueueLag drives the worker autoscaling)
    metrics_enabled: bool = False

    # --- reputation alerts (an SNS topic; unset: the log only)
    alerts_topic_arn: str | None = None

    # --- deliverability policy and retention
    soft_bounce_limit: int = Field(default=5, ge=1)
    soft_bounce_window_days: int = Field(default=30, ge=1)
    event_retention_days: int = Field(default=400, ge=1)
    message_retention_days: int = Field(default=400, ge=1)
    # how far ahead a sequence step may be scheduled (delays, offsets, dates from the context)
    sequence_max_days: int = Field(default=3653, ge=1, le=36500)
    audit_retention_days: int = Field(default=730, ge=1)
    # key of the pseudonyms kept for erased addresses (jetmail.gdpr); unset: derived from
    # signing_secret. Set it before rotating signing_secret, or erased addresses stop matching.
    erasure_secret: SecretStr | None = Field(default=None, min_length=16)

    @field_validator("sns_topic_arns", "cors_origins", "allowed_from", mode="before")
    @classmethod
    def _arn_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("sns_cert_host_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("rate_domain_limits", mode="before")
    @classmethod
    def _domain_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            pairs = (part.split("=", 1) for part in text.split(",") if part.strip())
            return {name.strip(): limit.strip() for name, limit in pairs}
        return value

    @field_validator("rate_warmup_schedule", mode="before")
    @classmethod
    def _warmup_schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


    @property
    def stats_table(self) -> str:
        return self.stats_table_name or f"{self.table_name}-stats"

    @property
    def render_limits(self) -> RenderLimits:
        from jetmail.templating.limits import RenderLimits  # the templating package is heavy to import

        return RenderLimits(max_output=self.render_max_output_chars, timeout_s=self.render_timeout_s,
                            max_iterations=self.render_max_iterations, max_depth=self.render_max_depth)


# In Lambda, secrets arrive as Secrets Manager ARNs, never as values in the environment: each
# ``JETMAIL_<NAME>_ARN`` is read once at cold start. A JSON secret fills several settings by key.
SECRET_ARNS = {
    "JETMAIL_SIGNING_SECRET_ARN": {None: "signing_secret"},
    "JETMAIL_ERASURE_SECRET_ARN": {None: "erasure_secret"},
    "JETMAIL_NATS_CREDENTIALS_SECRET_ARN": {"user": "nats_user", "password": "nats_password"},
    "JETMAIL_NATS_TLS_CA_SECRET_ARN": {None: "nats_tls_ca_pem"},  # NATS TLS CA
    "JETMAIL_SMTP_CREDENTIALS_SECRET_ARN": {"username": "smtp_username", "password": "smtp_password"},
}


def secrets_from_arns(environ: dict[str, str]) -> dict[str, str]:
    import json

    values: dict[str, str] = {}
    wanted = {env: fields for env, fields in SECRET_ARNS.items() if environ.get(env)}
    if not wanted:
        return values
    import boto3

    client = boto3.client("secretsmanager", region_name=environ.get("JETMAIL_AWS_REGION")
                          or environ.get("AWS_REGION") or "us-east-1")
    for env, fields in wanted.items():
        secret = client.get_secret_value(SecretId=environ[env])["SecretString"]
        if None in fields:
            values[fields[None]] = secret
            continue
        data = json.loads(secret)
        for key, field_name in fields.items():
            if key in data:
                values[field_name] = str(data[key])
    return values


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a missing required value fails here with a clear message."""
    import os

    try:
        overrides = {k: v for k, v in secrets_from_arns(dict(os.environ)).items()
                     if not os.environ.get(f"JETMAIL_{k.upper()}")}
        return Settings(**overrides)  # type: ignore[arg-type]
    except Exception as exc:
        if isinstance(exc, ValidationError):
            raise _invalid(exc) from None
        raise ConfigError(f"cannot read a secret named by a JETMAIL_*_ARN setting: {exc}") from None


def _invalid(exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"JETMAIL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    )
    return ConfigError(f"invalid settings: {problems}")
