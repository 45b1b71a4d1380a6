"""``Kv``: the buckets of one NATS connection, opened (made when missing) once; ``Bucket``: one bucket's keys.

Every call of a ``Bucket`` is one request to the server unless its docstring says otherwise, and raises
only ``jetmail.kv.errors``: a missing key is ``None``, a lost race is ``KeyExists`` or
``RevisionMismatch``, a server that did not answer is ``KvUnavailable``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncGenerator, Iterable
from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from jetmail.kv.buckets import BUCKETS, BucketSpec
from jetmail.kv.errors import Contended, KeyExists, KvError, KvUnavailable, RevisionMismatch
from jetmail.queue.client import placed

_EXPECTED_REVISION = "Nats-Expected-Last-Subject-Sequence"
# JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
_WRONG_LAST_SEQUENCE = (10071, 10164)
_UNAVAILABLE = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
                nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)

# per JetStream context (one per connection): the buckets known to exist -> whether reads may go direct.
# Weak, so a closed connection's context is forgotten with it.
_opened: weakref.WeakKeyDictionary[JetStreamContext, dict[str, bool]] = weakref.WeakKeyDictionary()


class Entry(NamedTuple):
    """A key's value and the revision it was written at (a tuple: cheap to make on the limiter's hot path)."""

    key: str
    value: bytes
    revision: int


class Change(NamedTuple):
    """One write seen by ``Bucket.watch``: the new value, or None when the key was deleted or expired."""

    key: str
    value: bytes | None
    revision: int


def _translate(exc: nats.errors.Error) -> KvError:
    text = str(exc) or type(exc).__name__
    return KvUnavailable(text) if isinstance(exc, _UNAVAILABLE) else KvError(text)


class Bucket:
    """One bucket's keys (``Kv.bucket`` opens it)."""

    __slots__ = ("_js", "_kv", "_prefix", "name")

    def __init__(self, name: str, kv: KeyValue, js: JetStreamContext) -> None:
        self.name = name
        self._kv = kv
        self._js = js
        self._prefix = f"$KV.{name}."

    def subject(self, key: str) -> str:
        """The JetStream subject a key's values are messages on (for reading a bucket as a stream)."""
        return self._prefix + key

    async def get(self, key: str) -> Entry | None:
        """The key's value and revision; None when it has none (never written, deleted or expired)."""
        try:
            found = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.Error as exc:
            raise _translate(exc) from exc
        return Entry(key, found.value or b"", found.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        """Write ``value`` whatever the key holds; returns its revision. Without a TTL of its own."""
        try:
            return await self._kv.put(key, value)
        except nats.errors.Error as exc:
            raise _translate(exc) from exc

    async def create(self, key: str, value: bytes, *, ttl: int | None = None) -> int:
        """Write ``value`` only if the key holds none (a deleted or expired key counts as none); returns its
        revision. ``ttl``: whole seconds the value lives unless written again. Raises KeyExists. A key
        deleted before costs a second request and a third write."""
        for _ in range(2):
            try:
                return await self._kv.create(key, value, msg_ttl=ttl)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise KeyExists(f"{self.name}: {key} exists") from None
            except nats.js.errors.KeyNotFoundError:
                continue  # it expired between the refused write and nats-py's look at it: the next one is ours
            except nats.errors.Error as exc:
                raise _translate(exc) from exc
        raise KeyExists(f"{self.name}: {key} exists")

    async def update(self, key: str, value: bytes, *, revision: int, ttl: int | None = None) -> int:
        """Compare-and-set: write ``value`` only if the key is still at ``revision`` (0: only if it has
        never held a message, not even a deletion); returns the new revision. ``ttl``: whole seconds the
        new value lives unless written again (``KeyValue.update`` cannot set one). Raises RevisionMismatch."""
        return await self._publish(key, value, headers={_EXPECTED_REVISION: str(revision)}, ttl=ttl,
                                   revision=revision)

    async def delete(self, key: str, *, revision: int | None = None, ttl: int | None = None) -> None:
        """Remove the key and its history (a purge marker); with ``revision``, only if the key is still at
        it (RevisionMismatch otherwise). ``ttl``: the marker itself goes after that many seconds, so a
        bucket of finished keys empties itself."""
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        if revision is not None:
            headers[_EXPECTED_REVISION] = str(revision)
        await self._publish(key, b"", headers=headers, ttl=ttl, revision=revision)

    async def _publish(self, key: str, value: bytes, *, headers: dict[str, str], ttl: int | None,
                       revision: int | None) -> int:
        """One publish to the key's subject; a refused expected revision is RevisionMismatch."""
        try:
            ack = await self._js.publish(self._prefix + key, value, headers=headers, msg_ttl=ttl)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise RevisionMismatch(f"{self.name}: {key} is not at revision {revision}") from None
            raise _translate(exc) from exc
        except nats.errors.Error as exc:
            raise _translate(exc) from exc
        return int(ack.seq)

    async def add(self, key: str, n: int, *, ttl: int | None = None, attempts: int = 20) -> int:
        """Add ``n`` to the counter at ``key`` (a decimal integer; a key without one counts 0) and return the
        new count. One ``get`` and one conditional write, again for each writer that came in between, at
        most ``attempts`` times (then Contended). ``ttl``: the counter goes that many seconds after its
        last change. On a hot path shared by many writers, add in batches."""
        for _ in range(attempts):
            entry = await self.get(key)
            count = (int(entry.value or b"0") if entry is not None else 0) + n
            try:
                if entry is None:
                    await self.create(key, str(count).encode(), ttl=ttl)
                else:
                    await self.update(key, str(count).encode(), revision=entry.revision, ttl=ttl)
            except (KeyExists, RevisionMismatch):
                continue
            return count
        raise Contended(f"{self.name}: {key}: {attempts} writes in a row lost to other writers")

    async def watch(self) -> AsyncGenerator[Change, None]:
        """Every key's current value, then each write as it happens, until the caller stops (close the
        iterator: ``contextlib.aclosing``). One ordered consumer on the bucket's stream; no request per key."""
        try:
            watcher = await self._kv.watchall()
        except nats.errors.Error as exc:
            raise _translate(exc) from exc
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the current values
                deleted = entry.operation in ("DEL", "PURGE")
                yield Change(entry.key, None if deleted else (entry.value or b""), entry.revision or 0)
        except nats.errors.Error as exc:
            raise _translate(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py


class Kv:
    """The KV buckets of one JetStream context. Cheap to make: which buckets exist is remembered per
    context, so each is looked up (and made when missing, with ``replicas``) once per connection and
    process, however many ``Kv`` are made on it."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas
        self._buckets: dict[str, Bucket] = {}

    @classmethod
    def of(cls, source: Kv | JetStreamContext, *, replicas: int = 1) -> Kv:
        """``source`` itself, or a ``Kv`` on the JetStream context ``source`` (for callers that hold one)."""
        return source if isinstance(source, Kv) else cls(source, replicas=replicas)

    async def bucket(self, spec: BucketSpec) -> Bucket:
        """The bucket, made when missing. Free once this context knows it, else one request (two when it is
        made, or when a bucket made before per-key TTLs is made to allow them)."""
        bucket = self._buckets.get(spec.name)
        if bucket is not None:
            return bucket
        known = _opened.setdefault(self.js, {})
        if spec.name not in known:
            try:
                known[spec.name] = await self._open(spec)
            except nats.errors.Error as exc:
                raise _translate(exc) from exc
        kv = KeyValue(name=spec.name, stream=f"KV_{spec.name}", pre=f"$KV.{spec.name}.", js=self.js,
                      direct=known[spec.name])
        bucket = self._buckets[spec.name] = Bucket(spec.name, kv, self.js)
        return bucket

    async def ensure(self, specs: Iterable[BucketSpec] = BUCKETS) -> list[str]:
        """Open every bucket of ``specs`` (all of jetmail's by default), making the missing ones; their names."""
        return [(await self.bucket(spec)).name for spec in specs]

    async def _open(self, spec: BucketSpec) -> bool:
        """Make the bucket when missing; whether its stream answers direct gets."""
        try:
            info = await self.js.stream_info(f"KV_{spec.name}")
        except nats.js.errors.NotFoundError:
            # made concurrently by another process with the same config, this is a no-op
            await placed(lambda: self.js.create_key_value(KeyValueConfig(
                bucket=spec.name, ttl=spec.ttl, history=spec.history, replicas=self.replicas,
                storage=StorageType.FILE if spec.storage == "file" else StorageType.MEMORY)))
            return False
        if spec.key_ttl and not info.config.allow_msg_ttl:
            info.config.allow_msg_ttl = True
            await self.js.update_stream(info.config)
        return bool(info.config.allow_direct)
