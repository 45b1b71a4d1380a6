"""Typed settings, read once at the edge (CLI, Lambda module scope, worker start) and passed in.

Values come from environment variables prefixed ``JETMAIL_``, then from ``.env`` and from the
file the local stack writes (``.jetmail/dev/jetmail.env``) while it runs. Nothing below the edge
reads ``os.environ``.

The sources are read here rather than by pydantic-settings' ``BaseSettings``: importing pydantic-settings
loads every source it has (cloud secret stores, a CLI parser, TOML, YAML, asyncio), a sixth of a function's
cold start, for the three jetmail reads. They are read as ``BaseSettings`` read them (``env_prefix``, names
in any case, later env files win, the environment over the files, arguments over both), and values reach the
fields as text, so the list settings take a JSON list or comma-separated values alike.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

if TYPE_CHECKING:
    from jetmail.messaging.templating.limits import RenderLimits

DEV_ENV_FILE = ".jetmail/dev/jetmail.env"
ENV_PREFIX = "JETMAIL_"
ENV_FILES = (".env", DEV_ENV_FILE)

EnvFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class ConfigError(RuntimeError):
    """A required setting is missing or invalid; the message names it."""


class SettingsConfig(ConfigDict, total=False):
    """pydantic's model config, plus where ``Settings`` reads its values from."""

    env_prefix: str
    env_file: tuple[str, ...]
    env_file_encoding: str


def read_env_files(files: EnvFiles | None, *, encoding: str = "utf-8") -> dict[str, str | None]:
    """The variables of the env files that exist (relative to the working directory), names lowercased, a
    later file's value over an earlier one's."""
    if files is None:
        return {}
    found: dict[str, str | None] = {}
    for file in [files] if isinstance(files, (str, os.PathLike)) else files:
        path = Path(file).expanduser()
        if not (path.is_file() or path.is_fifo()):
            continue
        from dotenv import dotenv_values  # only where a file exists: a function's environment has none

        found.update({name.lower(): value for name, value in dotenv_values(path, encoding=encoding).items()})
    return found


class Settings(BaseModel):
    model_config = SettingsConfig(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILES,
        env_file_encoding="utf-8",
        extra="ignore",
        # as pydantic-settings: defaults are validated too, and any field type is allowed
        validate_default=True,
        arbitrary_types_allowed=True,
    )

    # --- NATS / job layer
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URLs, comma separated (all three nodes of a cluster)."""
    nats_creds_file: str | None = None
    """A NATS credentials file (JWT and nkey), instead of a user and password."""
    nats_user: str | None = None
    """NATS user: `api` for the functions, `worker` for workers and `jetmail init`."""
    nats_password: SecretStr | None = None
    """That user's password (in AWS: from `JETMAIL_NATS_CREDENTIALS_SECRET_ARN`)."""
    nats_tls_ca_file: str | None = None
    """The private CA that signed the NATS servers' certificates, as a PEM file: the job layer then trusts
    only it, checks the host name and requires TLS 1.2 or later. Unset: the system's CAs."""
    nats_tls_ca_pem: str | None = None
    """The same CA as PEM text (Lambda reads it from Secrets Manager through
    `JETMAIL_NATS_TLS_CA_SECRET_ARN`)."""
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of every stream and KV bucket `jetmail init` creates (3 in a cluster)."""
    jobs_stream: str = "JOBS"
    """The work-queue stream of jobs."""
    dlq_stream: str = "JOBS_DLQ"
    """The stream of dead letters (jobs that failed for good)."""
    stops_stream: str = "STOPS"
    """The stream of stop events (suppressions, unsubscribes, erasures) that running campaigns and the
    transactional send-time check follow."""
    duplicate_window_s: float = Field(default=3600.0, gt=0)
    """Seconds within which a job id is de-duplicated by the server."""

    # --- AWS (endpoint set locally to the moto server; unset in AWS)
    aws_region: str = "us-east-1"
    """AWS region of DynamoDB, SES, SNS, Secrets Manager and CloudWatch."""
    aws_endpoint_url: str | None = None
    """An endpoint for every AWS call: only for the local moto server."""
    aws_access_key_id: str | None = None
    """Static credentials for that endpoint. The local stack writes its own into `jetmail.env`, so a
    shell needs no AWS variables; unset in AWS, where the function's or task's role applies."""
    aws_secret_access_key: SecretStr | None = None
    """The secret of those static credentials."""
    aws_read_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Seconds an AWS call waits for its reply before the SDK retries it (SES: fails the attempt)."""
    table_name: str = Field(min_length=3)
    """The main DynamoDB table."""
    stats_table_name: str | None = Field(default=None, min_length=3)
    """The table of events and engagement counters; unset: the main table's name + `-stats`."""

    # --- delivery
    provider: Literal["smtp", "ses"] = "smtp"
    """How mail leaves: `smtp` or `ses` (SES v2)."""
    smtp_host: str = "127.0.0.1"
    """The SMTP provider's server."""
    smtp_port: int = 2525
    """Its port."""
    smtp_username: str | None = None
    """Its AUTH user; unset: no AUTH."""
    smtp_password: SecretStr | None = None
    """Its AUTH password."""
    smtp_starttls: bool = False
    """Upgrade the connection with STARTTLS."""
    smtp_use_tls: bool = False
    """Connect with implicit TLS (port 465)."""
    smtp_timeout_s: float = 10.0
    """Seconds one SMTP command may take."""
    campaign_sends_per_worker: int = Field(default=32, ge=1, le=1000)
    """Campaign sends in flight per worker process, across all its batches (8 per batch at most)."""
    campaign_plan_parts: int = Field(default=8, ge=1, le=64)
    """Plan jobs one run of a campaign may be split into, each planning a range of the addresses in parallel
    (1: one job plans every campaign)."""
    campaign_plan_split_after: int = Field(default=20_000, ge=100)
    """Recipients a plan job plans before it hands the top half of the rest of its address range to a new
    plan job (while the run has parts to spare)."""
    smtp_pool_size: int = Field(default=8, ge=1, le=64)
    """SMTP connections per lane and worker: campaigns have this many, and the transactional lane as many of its
    own."""
    smtp_max_messages_per_connection: int = Field(default=100, ge=1)
    """Messages sent on one SMTP connection before it is replaced."""
    ses_configuration_set: str | None = None
    """The SES configuration set every send names (its event destination feeds bounces, complaints,
    deliveries, opens and clicks back)."""
    ses_simulator: bool = False
    """The local SES mailbox simulator (on in the local stack): what SES would report for its simulator
    addresses, without SES."""
    smtp_pipelining: bool = True
    """Send MAIL FROM, RCPT TO and DATA in one write when the server offers PIPELINING (RFC 2920), and a campaign
    message's right after the previous one's body, before its reply; `false` for a relay that advertises it but
    mishandles it."""
    dkim_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
    """The `d=` domain of the DKIM signature on SMTP-provider mail (usually the From domain); unset: the
    SMTP provider does not sign (SES signs its own mail)."""
    dkim_selector: str = Field(default="jetmail", pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
    """The DKIM selector: the public key is the TXT record `<selector>._domainkey.<dkim_domain>`."""
    dkim_private_key: SecretStr | None = None
    """The RSA private key that signs, in PEM (in AWS: from `JETMAIL_DKIM_PRIVATE_KEY_SECRET_ARN`)."""
    simulator_domain: str | None = "simulator.jetmail.local"
    """The domain whose addresses the local simulator answers for."""

    # --- sending rate (jetmail.deliverability.ratelimit); 0 means no limit for that window. The defaults are the
    # quota SES gives an account out of the sandbox: set them to your provider's limits.
    rate_per_second: float = Field(default=14.0, ge=0)
    """Provider messages per second, shared by all workers; 0: no limit."""
    rate_per_minute: int = Field(default=0, ge=0)
    """Provider messages per minute; 0: no limit."""
    rate_per_hour: int = Field(default=0, ge=0)
    """Provider messages per hour; 0: no limit."""
    rate_per_day: int = Field(default=50000, ge=0)
    """Provider messages per UTC day; 0: no limit."""
    rate_domain_limits: dict[str, int] = Field(
        default_factory=lambda: {"gmail.com": 600, "yahoo.com": 300, "outlook.com": 300})
    """Messages per minute per recipient domain: `gmail.com=600,yahoo.com=300` or a JSON object."""
    rate_transactional_share: float = Field(default=0.2, ge=0, lt=1)
    """The share of every window marketing mail may never take (kept for transactional mail)."""
    rate_window_guard_s: float = Field(default=0.05, ge=0, le=0.5)
    """No tokens in the last part of a second, so a send lands inside the second that counted it."""
    rate_throttle_factor: float = Field(default=0.5, gt=0, lt=1)
    """On provider throttling: the per-second rate of all workers is multiplied by this."""
    rate_throttle_floor: float = Field(default=1.0, gt=0)
    """...but not below this many messages per second."""
    rate_recovery_step: float = Field(default=0.05, gt=0, le=1)
    """Then it rises by this share of the configured rate..."""
    rate_recovery_interval_s: float = Field(default=10.0, gt=0)
    """...every this many seconds without throttling."""
    rate_warmup_schedule: list[int] = Field(default_factory=list)
    """Daily marketing caps for a new sending domain or IP, from `rate_warmup_start` (UTC days):
    `200,500,1000,…` or a JSON list; empty: no warm-up."""
    rate_warmup_start: date | None = None
    """The first day of the warm-up schedule (YYYY-MM-DD)."""

    # --- identity and links
    signing_secret: SecretStr = Field(min_length=16)
    """HMAC key of unsubscribe, tracking and dashboard tokens (at least 16 characters)."""
    public_base_url: str = "http://127.0.0.1:8000"
    """The base of unsubscribe, tracking and dashboard links in mail."""
    default_from: str = "jetmail <noreply@example.com>"
    """The sender when a request names none."""
    default_locale: str = "en"
    """The language when a recipient has none."""
    default_timezone: str = "UTC"
    """The time zone when a recipient has none."""
    company_name: str = "jetmail"
    """The sender's name in every email's footer."""
    company_address: str = "1 Example Street, 10115 Berlin, Germany"
    """The postal address every marketing email must show (CAN-SPAM)."""
    allowed_from: list[str] = Field(default_factory=list)
    """From addresses mail may be sent from: addresses (`noreply@example.com`) and whole domains
    (`example.com`), comma separated or a JSON list; empty: any address at `default_from`'s domain."""

    # --- API
    max_body_bytes: int = 256 * 1024
    """The API's request body limit (413 above it)."""
    api_rate_per_minute: int = Field(default=600, ge=0)
    """Requests per minute per API key; 0: no limit. A key's own limit (`jetmail keys limit`) replaces it."""
    api_key_cache_s: float = Field(default=5.0, ge=0, le=60)
    """Seconds an API process keeps a token's verdict (the key, or a refusal): revocation, rotation and limit
    changes reach every warm container within it; 0 reads the key on every request."""
    template_cache_s: float = Field(default=5.0, ge=0, le=300)
    """Seconds a process (API, worker) keeps a template's head (its latest version per locale): a saved
    template is used for new sends everywhere within it; 0 reads the head for every message."""
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed to call the API (CORS), comma separated or a JSON list; empty: no CORS
    headers."""
    country_header: str = "cloudfront-viewer-country"
    """The request header opens and clicks take their country from."""

    # --- public subscription forms (POST /subscribe/{public id}, docs/guide/subscriptions.md)
    subscribe_rate_per_ip: int = Field(default=10, ge=0)
    """Subscribe requests per minute from one client address; 0: no limit."""
    subscribe_rate_per_address: int = Field(default=3, ge=0)
    """Subscribe requests per minute for one email address; 0: no limit. A pending subscription gets at most
    one confirmation mail an hour, whatever the requests."""
    subscribe_challenge: str = Field(default="none", pattern=r"^(none|pow|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
    """A check a form post must pass: `none`, `pow` (a hashcash-style proof of work the form snippet computes
    in the browser), or `module:Class` of your own (`jetmail.audience.intake.Challenge`)."""
    subscribe_pow_bits: int = Field(default=16, ge=8, le=28)
    """Leading zero bits the proof of work needs (each one doubles the browser's work)."""
    pending_expiry_days: int = Field(default=7, ge=1, le=90)
    """Days a double opt-in subscription waits for its confirmation; then the scheduler drops it (and its
    confirmation link stops working)."""
    consent_ip: Literal["hash", "truncate", "full"] = "hash"
    """How a subscriber's IP address is kept in the consent record: `hash` (a keyed hash), `truncate` (IPv4
    /24, IPv6 /48) or `full`."""

    # --- SMTP submission server (`jetmail smtp-server`, jetmail.messaging.submission): applications send
    # with an API key
    submission_host: str = "0.0.0.0"  # noqa: S104 - a server for other machines; the NLB fronts it in AWS
    """The address `jetmail smtp-server` listens on."""
    submission_port: int = Field(default=587, ge=0, le=65535)
    """Its STARTTLS port (STARTTLS required before AUTH); 0 turns it off."""
    submission_tls_port: int = Field(default=465, ge=0, le=65535)
    """Its implicit-TLS port; 0 turns it off."""
    submission_cert_file: str | None = None
    """Its TLS certificate chain (PEM); unset, and no `submission_cert_pem` either: `jetmail smtp-server`
    refuses to start (the local stack makes a self-signed pair)."""
    submission_key_file: str | None = None
    """The key of that certificate (PEM)."""
    submission_cert_pem: str | None = None
    """The certificate chain as PEM text instead of a file (in AWS: injected from the secret
    `JETMAIL_SUBMISSION_TLS_SECRET_ARN` names, `{"cert": ..., "key": ...}`)."""
    submission_key_pem: SecretStr | None = None
    """Its key as PEM text."""
    submission_hostname: str = "localhost"
    """The name in its greeting and EHLO reply."""
    submission_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Bytes of one submitted message as sent (552 above it)."""
    submission_max_recipients: int = Field(default=50, ge=1, le=1000)
    """Recipients per submitted message (452 above it)."""
    submission_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a client may stay silent between commands, and for the whole of one DATA (421 after it)."""
    submission_max_connections_per_ip: int = Field(default=20, ge=1)
    """Open connections per client address (421 at the greeting above it)."""
    submission_retention_hours: int = Field(default=72, ge=1, le=24 * 30)
    """Hours a submitted body is kept for the worker, retries included (the object store's TTL)."""

    # --- bounces without SES (jetmail.deliverability.bounces, `jetmail bounce-server`)
    bounce_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
    """The domain of the return path of SMTP-provider mail: its envelope sender becomes
    `bounces+<signed token>@<bounce_domain>`, whose MX points at `jetmail bounce-server`; unset: the
    envelope sender is the From address and no bounce comes back to jetmail."""
    bounce_host: str = "0.0.0.0"  # noqa: S104 - receives mail from other machines' MTAs
    """The address `jetmail bounce-server` listens on."""
    bounce_port: int = Field(default=25, ge=0, le=65535)
    """Its port (an MX is reached on 25)."""
    bounce_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Bytes of one received report (552 above it)."""
    bounce_imap_host: str | None = None
    """The IMAP server of the mailbox bounces and complaints are delivered to (`jetmail bounce-mailbox`),
    reached over TLS."""
    bounce_imap_port: int = Field(default=993, ge=1, le=65535)
    """Its port (IMAP over TLS)."""
    bounce_imap_username: str | None = None
    """The mailbox's user."""
    bounce_imap_password: SecretStr | None = None
    """Its password (in AWS: from `JETMAIL_BOUNCE_IMAP_CREDENTIALS_SECRET_ARN`)."""
    bounce_imap_folder: str = "INBOX"
    """The folder reports arrive in."""
    bounce_imap_delete: bool = True
    """Delete each message once processed; `false`: mark it seen and leave it (only unseen ones are read)."""
    bounce_imap_poll_s: float = Field(default=60.0, ge=1, le=3600)
    """Seconds between checks of a server without IMAP IDLE (with IDLE, new mail is read on arrival)."""
    bounce_imap_ca_file: str | None = None
    """The CA that signed the IMAP server's certificate, as a PEM file; unset: the system's CAs."""

    # --- template rendering limits (jetmail.messaging.templating.limits), per render of one message; saving a
    # template test-renders its sample_context under the same limits
    render_max_output_chars: int = Field(default=2_000_000, ge=1000)
    """Characters per part (subject, HTML, text) and per value a template builds on the way."""
    render_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """Seconds for all parts of one render."""
    render_max_iterations: int = Field(default=1_000_000, ge=1000)
    """Loop iterations, calls and filters in one render."""
    render_max_depth: int = Field(default=32, ge=4, le=200)
    """Nested blocks in a template source, and nested macro calls while rendering."""

    # --- SNS (SES events over an HTTPS subscription; POST /sns/ses)
    sns_topic_arns: list[str] = Field(default_factory=list)
    """Topics whose messages `POST /sns/ses` accepts and whose subscriptions it confirms, comma separated or
    a JSON list; empty: it refuses everything (SNS → Lambda needs none)."""
    sns_cert_host_pattern: str = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
    """Hosts SNS signing certificates may come from."""
    sns_cert_cache_dir: str | None = None
    """A folder of trusted signing certificates, `<sha256 of the SigningCertURL>.pem`, used before
    fetching: for a network without egress."""
    sns_max_age_s: float = Field(default=3600.0, gt=0)
    """Older SNS messages are refused (SNS retries resend the original Timestamp: raise it if a custom
    delivery policy retries for longer)."""

    # --- CloudWatch metrics from the scheduler tick (QueueLag drives the worker autoscaling)
    metrics_enabled: bool = False
    """Publish the queue-lag metric the worker service scales on (on in AWS)."""

    # --- reputation alerts (an SNS topic; unset: the log only)
    alerts_topic_arn: str | None = None
    """The SNS topic reputation alerts go to; unset: the log only."""

    # --- deliverability policy and retention
    soft_bounce_limit: int = Field(default=5, ge=1)
    """Soft bounces within the window that suppress an address."""
    soft_bounce_window_days: int = Field(default=30, ge=1)
    """That window, in days."""
    event_retention_days: int = Field(default=400, ge=1)
    """Days events are kept (their TTL)."""
    message_retention_days: int = Field(default=400, ge=1)
    """Days message records are kept (their TTL)."""
    sequence_max_days: int = Field(default=3653, ge=1, le=36500)
    """How far ahead a sequence step may be sent: longer delays or offsets are refused when a definition is
    saved and at enrolment (422), as is a context date that puts a step further out."""
    audit_retention_days: int = Field(default=730, ge=1)
    """Days audit log entries are kept."""
    erasure_secret: SecretStr | None = Field(default=None, min_length=16)
    """Key of the pseudonyms kept for erased addresses; unset: derived from `signing_secret`. Set it
    before rotating `signing_secret`, or erased addresses stop matching."""

    # --- outgoing webhooks (docs/guide/webhooks.md)
    webhook_allow_private: bool = False
    """Deliver webhooks to private, loopback, link-local and reserved addresses. Off in production, so an
    endpoint cannot reach internal services; the local stack and the tests turn it on."""
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=30)
    """Seconds a receiver has to answer one delivery (connect and response) before it counts as a failure."""
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    """The first retry's delay; each next one doubles, up to `webhook_retry_max_s`, with +/- 25 % jitter."""
    webhook_retry_max_s: float = Field(default=7200.0, gt=0)
    """The longest delay between two attempts of one delivery."""
    webhook_give_up_s: float = Field(default=86400.0, gt=0)
    """How long one delivery keeps failing before jetmail disables its endpoint and alerts."""
    webhook_cache_s: float = Field(default=10.0, ge=0)
    """Seconds each process caches the list of webhook endpoints (how soon a new endpoint gets events)."""
    webhook_log_retention_days: int = Field(default=30, ge=1)
    """Days the webhook delivery log (attempts and the events they sent) is kept (their TTL)."""

    # --- transactional attachments
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0, le=64 * 1024 * 1024)
    """Attachments of one message, decoded, together (413 above it). The message routes accept a body of
    this size in base64 plus `max_body_bytes`; on Lambda behind API Gateway a request stops at 6 MB
    (Lambda's synchronous payload) whatever this says, so about 4 MB of attachments go through there."""

    def __init__(self, *, _env_file: EnvFiles | None = ENV_FILES, **values: Any) -> None:
        """Arguments, then ``JETMAIL_*`` environment variables, then the env files (``_env_file=None``: none),
        then the defaults."""
        super().__init__(**{**self.from_sources(os.environ, read_env_files(_env_file)), **values})

    @classmethod
    def from_sources(cls, environ: Mapping[str, str], files: Mapping[str, str | None]) -> dict[str, str]:
        """The fields the environment and the env files set, by field name, as text: the environment's value
        over the files', a name matched in any case."""
        env = {name.lower(): value for name, value in environ.items()}
        prefix = ENV_PREFIX.lower()
        values: dict[str, str] = {}
        for field in cls.model_fields:
            value = env.get(prefix + field)
            if value is None:
                value = files.get(prefix + field)
            if value is not None:
                values[field] = value
        return values

    @field_validator("sns_topic_arns", "cors_origins", "allowed_from", "rate_warmup_schedule", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        """A list setting from the environment: a JSON array, or comma separated values."""
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

    @property
    def stats_table(self) -> str:
        return self.stats_table_name or f"{self.table_name}-stats"

    @property
    def render_limits(self) -> RenderLimits:
        from jetmail.messaging.templating.limits import RenderLimits  # the templating package is heavy to import

        return RenderLimits(max_output=self.render_max_output_chars, timeout_s=self.render_timeout_s,
                            max_iterations=self.render_max_iterations, max_depth=self.render_max_depth)


# In Lambda, secrets arrive as Secrets Manager ARNs, never as values in the environment: each
# ``JETMAIL_<NAME>_ARN`` is read once at cold start. A JSON secret fills several settings by key.
SECRET_ARNS: dict[str, dict[str | None, str]] = {
    "JETMAIL_SIGNING_SECRET_ARN": {None: "signing_secret"},
    "JETMAIL_ERASURE_SECRET_ARN": {None: "erasure_secret"},
    "JETMAIL_NATS_CREDENTIALS_SECRET_ARN": {"user": "nats_user", "password": "nats_password"},
    "JETMAIL_NATS_TLS_CA_SECRET_ARN": {None: "nats_tls_ca_pem"},  # NATS TLS CA
    "JETMAIL_SMTP_CREDENTIALS_SECRET_ARN": {"username": "smtp_username", "password": "smtp_password"},
    "JETMAIL_DKIM_PRIVATE_KEY_SECRET_ARN": {None: "dkim_private_key"},
    "JETMAIL_SUBMISSION_TLS_SECRET_ARN": {"cert": "submission_cert_pem", "key": "submission_key_pem"},
    "JETMAIL_BOUNCE_IMAP_CREDENTIALS_SECRET_ARN": {"username": "bounce_imap_username",
                                                   "password": "bounce_imap_password"},
}


def secrets_from_arns(environ: dict[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    wanted = {env: fields for env, fields in SECRET_ARNS.items() if environ.get(env)}
    if not wanted:
        return values
    import boto3  # only where a secret is named: importing boto3 is a large share of a cold start

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
    try:
        overrides = {k: v for k, v in secrets_from_arns(dict(os.environ)).items()
                     if not os.environ.get(f"JETMAIL_{k.upper()}")}
        return Settings(**overrides)
    except Exception as exc:
        if isinstance(exc, ValidationError):
            raise _invalid(exc) from None
        raise ConfigError(f"cannot read a secret named by a JETMAIL_*_ARN setting: {exc}") from None


def _invalid(exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"JETMAIL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    )
    return ConfigError(f"invalid settings: {problems}")


def descriptions() -> dict[str, str]:
    """Each setting's docstring, by field name (docs/reference/settings.md). Read from this module's source on
    demand: pydantic's ``use_attribute_docstrings`` would parse it at every import, a tenth of a cold start."""
    import ast
    import inspect
    import itertools

    found: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for field, doc in itertools.pairwise(body):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            found[field.target.id] = inspect.cleandoc(doc.value.value)
    return found
