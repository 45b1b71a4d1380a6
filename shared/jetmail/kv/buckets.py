"""Every KV bucket jetmail uses, declared once: its name, how long a value lives, history, storage and what
it holds (docs/architecture.md, "KV buckets", lists the same).

``jetmail init`` (``jetmail.bootstrap``) and every worker at start make all of ``BUCKETS`` with the
configured replicas (``JETMAIL_STREAM_REPLICAS``); any other user opens its bucket through
``Kv.bucket``, which makes it when it is missing. A bucket's config is fixed once data lives in it: a name
or a setting changed here reaches new deployments only (nothing migrates a bucket), so data in place
keeps the config it was made with.

The job layer's recurring schedules live in a bucket of its own (``QueueConfig.schedules_bucket``,
``JOBS_SCHEDULES``), made with its streams by ``Queue.ensure_streams``: the job layer imports nothing of
jetmail, this module included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

DAY = 86400


@dataclass(frozen=True, slots=True)
class BucketSpec:
    name: str
    holds: str
    # seconds a value is kept after it was written (the bucket's max age); None: until replaced
    ttl: int | None = None
    history: int = 1
    storage: Literal["file", "memory"] = "file"
    # values carry TTLs of their own (``create``/``update``/``add`` with ``ttl``): the bucket's stream
    # must allow per-message TTLs, which a bucket made by an older jetmail may not yet
    key_ttl: bool = False

    def named(self, name: str) -> BucketSpec:
        """The same bucket under another name (a test's or a benchmark's own rate-limit counters)."""
        return replace(self, name=name)


CAMPAIGN_STATE = BucketSpec(
    "jetmail_campaign_state",
    holds="each campaign's state (`<campaign id>` -> `sending`, `paused`, ...), mirrored from DynamoDB "
          "and watched by every worker",
)
# the batch leases: the bucket kept the name of the per-recipient claims it once held
CAMPAIGN_LEASES = BucketSpec(
    "jetmail_campaign_claims", ttl=30 * DAY, key_ttl=True,
    holds="one lease per batch attempt and per plan run (`<campaign>.<run>.<batch or plan>` -> holder), "
          "each expiring by its own TTL unless its holder refreshes it",
)
CAMPAIGN_JOURNAL = BucketSpec(
    "jetmail_campaign_journal", ttl=30 * DAY,
    holds="what became of each recipient of a batch (`<campaign>.<run>.<batch>.<position>` -> JSON), "
          "published without waiting and read back as a stream; kept as long as the leases",
)
REPUTATION = BucketSpec(
    "jetmail_reputation", ttl=3 * DAY,
    holds="sends per hour (`sent.<yyyymmddhh>` -> count) and the reputation monitor's stops "
          "(`state` -> JSON)",
)
# file storage, as every bucket here: a day's warm-up count must survive a server restart
RATE_LIMITS = BucketSpec(
    "jetmail_ratelimit", key_ttl=True,
    holds="the send-rate windows (`<provider>.<s|m|h|d>.<start>`, `<provider>.dom.<domain>.m.<start>` -> "
          "`<total> <marketing>`, each expiring after its window), throttling (`<provider>.aimd`), worker "
          "heartbeats (`<provider>.workers`), the reputation slow-down (`<provider>.slowdown`); the API's "
          "per-key request windows as provider `api-<key id>`",
)

BUCKETS: tuple[BucketSpec, ...] = (CAMPAIGN_STATE, CAMPAIGN_LEASES, CAMPAIGN_JOURNAL, REPUTATION, RATE_LIMITS)
