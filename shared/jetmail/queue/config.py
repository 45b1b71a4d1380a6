"""Connection and stream settings of the job layer, passed in explicitly (never read from the environment)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Where the job layer connects and how its streams are shaped.

    Frozen so a config can key the process-wide ``SyncClient`` cache.
    """

    nats_url: str
    creds_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    # TLS to nats-server with a private CA: a PEM file, or the PEM text itself (from Secrets Manager); with
    # either, the server's certificate must chain to that CA and name the host in the URL
    tls_ca_file: str | None = None
    tls_ca_pem: str | None = field(default=None, repr=False)
    stream: str = "JOBS"
    dlq_stream: str = "JOBS_DLQ"
    replicas: int = 1
    duplicate_window: float = 3600.0
    ack_wait: float = 30.0
    schedules_bucket: str = "JOBS_SCHEDULES"
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    client_name: str = "jetmail"

    def __post_init__(self) -> None:
        if not self.nats_url.strip():
            raise ValueError("nats_url must not be empty")
        for label, value in (("stream", self.stream), ("dlq_stream", self.dlq_stream),
                             ("schedules_bucket", self.schedules_bucket)):
            if not _NAME_RE.match(value):
                raise ValueError(f"{label} {value!r} must match [A-Za-z0-9_-]+")
        if self.stream == self.dlq_stream:
            raise ValueError("stream and dlq_stream must differ")
        if not 1 <= self.replicas <= 5:
            raise ValueError(f"replicas must be between 1 and 5, got {self.replicas}")
        for label, seconds in (("duplicate_window", self.duplicate_window), ("ack_wait", self.ack_wait),
                               ("connect_timeout", self.connect_timeout),
                               ("request_timeout", self.request_timeout)):
            if seconds <= 0:
                raise ValueError(f"{label} must be positive, got {seconds}")

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]
