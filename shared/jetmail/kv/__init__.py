"""NATS KV, the one way jetmail reads and writes it: typed entries, jetmail's own errors, one list of buckets.

An adapter below the domain: it imports nothing of jetmail but its own modules.

    kv = Kv(queue.js, replicas=settings.stream_replicas)
    bucket = await kv.bucket(REPUTATION)          # made when missing, once per connection
    entry = await bucket.get("state")             # Entry(key, value, revision) or None
    await bucket.create(key, b"holder", ttl=30)   # KeyExists when it holds a value
    await bucket.update(key, value, revision=entry.revision, ttl=60)  # RevisionMismatch when it moved on
    await bucket.add("sent.2031050607", 100)      # a counter: compare-and-set, retried
    await kv.ensure()                             # every bucket of ``BUCKETS`` (``jetmail init``)
"""

from jetmail.kv.buckets import (
    BUCKETS,
    CAMPAIGN_JOURNAL,
    CAMPAIGN_LEASES,
    CAMPAIGN_STATE,
    RATE_LIMITS,
    REPUTATION,
    BucketSpec,
)
from jetmail.kv.errors import Contended, KeyExists, KvError, KvUnavailable, RevisionMismatch
from jetmail.kv.store import Bucket, Change, Entry, Kv

__all__ = [
    "BUCKETS",
    "CAMPAIGN_JOURNAL",
    "CAMPAIGN_LEASES",
    "CAMPAIGN_STATE",
    "RATE_LIMITS",
    "REPUTATION",
    "Bucket",
    "BucketSpec",
    "Change",
    "Contended",
    "Entry",
    "KeyExists",
    "Kv",
    "KvError",
    "KvUnavailable",
    "RevisionMismatch",
]
