"""Create what jetmail needs before it runs: the table (locally), streams and consumers, every KV bucket of
``jetmail.kv.buckets``, SES identity.

Idempotent; ``jetmail init`` and ``jetmail dev up`` call it. In AWS the table comes from
template.yaml and this only ensures the JetStream side.
"""

from __future__ import annotations

from collections.abc import Iterator

from jetmail.config import Settings
from jetmail.services import QUEUES, queue_config
from jetmail.storage.table import Table


def bootstrap(settings: Settings, *, create_table: bool | None = None) -> Iterator[str]:
    """Yield one line per step, for the CLI to print."""
    if create_table is None:
        create_table = settings.aws_endpoint_url is not None
    if create_table:
        for name in (settings.table_name, settings.stats_table):
            created = Table(settings, name=name).create()
            yield f"table {name}: {'created' if created else 'exists'}"
    from jetmail.queue import ensure_streams

    ensure_streams(queue_config(settings), list(QUEUES))
    yield f"streams {settings.jobs_stream}/{settings.dlq_stream} and consumers for {', '.join(QUEUES)}: ready"
    from jetmail.deliverability.stops import ensure_stream
    from jetmail.kv import Kv
    from jetmail.queue import SyncClient

    with SyncClient(queue_config(settings)) as client:
        buckets = client.run(lambda q: Kv(q.js, replicas=settings.stream_replicas).ensure())
        client.run(lambda q: ensure_stream(q.js, settings.stops_stream, replicas=settings.stream_replicas))
    yield f"KV buckets {', '.join(buckets)} (jetmail.kv.buckets): ready"
    yield f"stream {settings.stops_stream} (stop events that running campaigns follow): ready"
    if settings.provider == "ses" and settings.aws_endpoint_url:
        from jetmail.aws.clients import aws_client
        from jetmail.messaging.mime import parse_address

        sender = parse_address(settings.default_from)[1]
        client = aws_client("sesv2", settings)
        try:
            client.create_email_identity(EmailIdentity=sender.split("@", 1)[1])
            yield f"SES identity {sender.split('@', 1)[1]}: verified (local)"
        except client.exceptions.AlreadyExistsException:
            yield "SES identity: exists"
