"""The KV adapter (``jetmail.kv``) against the session's real nats-server, and ``jetmail init`` making every
registered bucket on a 3-node cluster with the configured replicas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest

from jetmail.devstack.cluster import NatsCluster
from jetmail.devstack.stack import StackState, wait_until_async
from jetmail.kv import (
    BUCKETS,
    BucketSpec,
    Change,
    Entry,
    KeyExists,
    Kv,
    KvError,
    RevisionMismatch,
)
from jetmail.queue import Queue, QueueConfig
from stacktools import stack_env

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def run(nats_url: str, scenario: Callable[[Kv], Awaitable[T]], *, drop: str | None = None) -> T:
    """``scenario`` on a ``Kv`` of a fresh connection; the bucket ``drop`` is deleted afterwards."""
    async def main() -> T:
        async with Queue(QueueConfig(nats_url=nats_url)) as queue:
            try:
                return await scenario(Kv(queue.js))
            finally:
                if drop is not None:
                    await queue.js.delete_key_value(drop)

    return asyncio.run(main())


@pytest.fixture
def spec(unique: str) -> BucketSpec:
    return BucketSpec(f"kvtest_{unique}", holds="one test's keys", ttl=3600, key_ttl=True)


def test_the_registry_keeps_the_configs_of_the_buckets_in_place() -> None:
    # data written by earlier releases lives in these buckets: a name or a setting changed here would leave
    # it behind (a bucket is never migrated)
    assert {b.name: (b.ttl, b.history, b.storage, b.key_ttl) for b in BUCKETS} == {
        "jetmail_campaign_state": (None, 1, "file", False),
        "jetmail_campaign_claims": (30 * 86400, 1, "file", True),
        "jetmail_campaign_journal": (30 * 86400, 1, "file", False),
        "jetmail_reputation": (3 * 86400, 1, "file", False),
        "jetmail_ratelimit": (None, 1, "file", True),
    }
    assert all(b.holds for b in BUCKETS)


def test_the_architecture_page_lists_every_bucket() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert [b.name for b in BUCKETS if f"`{b.name}`" not in page] == []


def test_a_missing_bucket_is_made_from_its_spec(nats_url: str, spec: BucketSpec) -> None:
    async def scenario(kv: Kv) -> tuple[bool, str, Any]:
        # GIVEN no bucket of that name; WHEN it is asked for, twice, and once more through another Kv
        first = await kv.bucket(spec)
        again = await kv.bucket(spec)
        other = await Kv(kv.js).bucket(spec)
        return first is again, other.name, (await kv.js.stream_info(f"KV_{spec.name}")).config

    same, name, config = run(nats_url, scenario, drop=spec.name)
    # THEN it exists with the spec's config, and each Kv hands out the one it opened
    assert same and name == spec.name
    assert (config.max_age, config.max_msgs_per_subject, config.num_replicas) == (3600, 1, 1)
    assert str(getattr(config.storage, "value", config.storage)) == "file"
    assert config.allow_msg_ttl


def test_create_writes_only_a_key_that_holds_no_value(nats_url: str, spec: BucketSpec) -> None:
    async def scenario(kv: Kv) -> tuple[int, Entry | None, int, Entry | None]:
        bucket = await kv.bucket(spec)
        # GIVEN a key one writer created
        first = await bucket.create("lock", b"one", ttl=60)
        held = await bucket.get("lock")
        # WHEN a second writer creates it too THEN it is refused, and the first value stays
        with pytest.raises(KeyExists):
            await bucket.create("lock", b"two")
        assert await bucket.get("lock") == held
        # AND once deleted, the key may be created again
        await bucket.delete("lock", revision=first)
        gone = await bucket.get("lock")
        again = await bucket.create("lock", b"three")
        return first, held, again, gone

    first, held, again, gone = run(nats_url, scenario, drop=spec.name)
    assert held == Entry("lock", b"one", first)
    assert gone is None and again > first


def test_a_write_at_a_revision_someone_moved_past_is_refused(nats_url: str, spec: BucketSpec) -> None:
    async def scenario(kv: Kv) -> tuple[int, Entry | None]:
        bucket = await kv.bucket(spec)
        # GIVEN two writers that read the same revision
        read = await bucket.put("count", b"1")
        # WHEN one writes at it
        won = await bucket.update("count", b"2", revision=read, ttl=60)
        # THEN the other's write and delete at that revision are refused
        with pytest.raises(RevisionMismatch):
            await bucket.update("count", b"3", revision=read)
        with pytest.raises(RevisionMismatch):
            await bucket.delete("count", revision=read)
        # AND revision 0 writes only a key that never had a value
        await bucket.update("fresh", b"1", revision=0)
        with pytest.raises(RevisionMismatch):
            await bucket.update("fresh", b"2", revision=0)
        return won, await bucket.get("count")

    won, entry = run(nats_url, scenario, drop=spec.name)
    assert entry == Entry("count", b"2", won)


def test_a_counter_counts_every_concurrent_add_and_expires_after_its_ttl(nats_url: str, spec: BucketSpec) -> None:
    async def scenario(kv: Kv) -> tuple[list[int], Entry | None, int]:
        bucket = await kv.bucket(spec)
        # GIVEN twenty writers adding one each at the same time, with a TTL of a second
        counts = await asyncio.gather(*(bucket.add("sent", 1, ttl=1) for _ in range(20)))
        total = await bucket.get("sent")

        # WHEN nobody adds for longer than the TTL THEN the counter is gone
        async def gone() -> bool:
            return await bucket.get("sent") is None

        await wait_until_async(gone, timeout=20, what="the counter expired")
        # AND the next add starts from nothing
        return sorted(counts), total, await bucket.add("sent", 5)

    counts, total, restarted = run(nats_url, scenario, drop=spec.name)
    assert counts == list(range(1, 21))
    assert total is not None and total.value == b"20"
    assert restarted == 5


def test_a_watch_sees_current_values_then_each_write(nats_url: str, spec: BucketSpec) -> None:
    async def scenario(kv: Kv) -> list[Change]:
        bucket = await kv.bucket(spec)
        await bucket.put("a", b"1")
        seen: list[Change] = []
        changes = bucket.watch()
        try:
            seen.append(await anext(changes))
            await bucket.put("b", b"2")
            seen.append(await anext(changes))
            await bucket.delete("a")
            seen.append(await anext(changes))
        finally:
            await changes.aclose()
        return seen

    seen = run(nats_url, scenario, drop=spec.name)
    assert [(c.key, c.value) for c in seen] == [("a", b"1"), ("b", b"2"), ("a", None)]


def test_what_nats_py_raises_comes_out_as_a_kv_error(nats_url: str, spec: BucketSpec) -> None:
    async def scenario(kv: Kv) -> None:
        bucket = await kv.bucket(spec)
        with pytest.raises(KvError):
            await bucket.get("not a key")
        with pytest.raises(KvError):
            await bucket.update("count", b"1", revision=0, ttl=0)  # a TTL of 0 s is refused by the server

    run(nats_url, scenario, drop=spec.name)


def test_init_makes_every_registered_bucket_with_the_configured_replicas(stack: StackState, tmp_path: Path) -> None:
    # GIVEN a 3-node cluster with nothing in it, and JETMAIL_STREAM_REPLICAS=3
    with NatsCluster(tmp_path / "nats") as cluster:
        env = {**stack_env(stack), **cluster.client_env("worker"), "JETMAIL_STREAM_REPLICAS": "3"}
        # WHEN an operator runs `jetmail init`
        done = subprocess.run([sys.executable, "-m", "jetmail.cli", "init"], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        # THEN every bucket of the registry exists, R3, with its declared config
        streams = cluster.streams()
        assert {b.name: streams[f"KV_{b.name}"].replicas for b in BUCKETS if f"KV_{b.name}" in streams} == {
            b.name: 3 for b in BUCKETS}
        assert all(b.name in done.stdout for b in BUCKETS), done.stdout

        async def configs() -> dict[str, tuple[float | None, int]]:
            nc = await nats.connect(servers=cluster.url.split(","), user="worker", password=cluster.passwords["worker"])
            try:
                js = nc.jetstream()
                found = {}
                for b in BUCKETS:
                    config = (await js.stream_info(f"KV_{b.name}")).config
                    found[b.name] = (config.max_age or None, config.max_msgs_per_subject)
                return found
            finally:
                await nc.close()

        assert asyncio.run(configs()) == {b.name: (b.ttl, b.history) for b in BUCKETS}
