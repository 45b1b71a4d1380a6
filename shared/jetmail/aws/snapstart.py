"""Lambda SnapStart for the functions (template.yaml parameter ``SnapStart``).

With SnapStart, Lambda runs a function's init once per published version, snapshots the memory, and
starts every later execution environment from that snapshot. Two things follow for jetmail:

- **Connections must not be in the snapshot.** A NATS connection (its socket and its loop thread) made
  during init would be restored as a dead socket in many environments at once. ``before_snapshot``
  closes the shared NATS client; the next call reconnects on its own. boto3 clients stay: their pooled
  HTTPS connections are re-opened by botocore's retry when a restored one turns out closed.
- **Init is free, so do more of it.** jetmail loads a service's modules on first use to keep plain cold
  starts short (docs/PERFORMANCE.md). Under SnapStart (``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``) the
  functions load them during init instead, so the snapshot already holds them and the first request pays
  nothing.

``snapshot_restore_py`` ships in Lambda's Python runtimes; elsewhere (tests, the local stack) the hooks are
not registered and nothing is loaded ahead.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger("jetmail.aws.snapstart")


def snapshotting() -> bool:
    """True while Lambda initialises a version for a SnapStart snapshot."""
    return os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start"


def close_connections(services: Any) -> None:
    """Close what must not be restored from a snapshot: the shared NATS client, if one was made."""
    queue = services.__dict__.get("queue")
    if queue is not None:
        queue.close()


def prepare(services: Any, *, properties: Iterable[str] = (), modules: Iterable[str] = (),
            calls: Iterable[Callable[[], object]] = ()) -> None:
    """Load ahead, for the snapshot: ``services``' cached ``properties`` (no network: clients connect on their
    first call), ``modules``, and whatever ``calls`` load (the API's deferred routers)."""
    for name in properties:
        getattr(services, name)
    for module in modules:
        importlib.import_module(module)
    for call in calls:
        call()


def install(services: Any, *, properties: Iterable[str] = (), modules: Iterable[str] = (),
            calls: Iterable[Callable[[], object]] = ()) -> bool:
    """Register the SnapStart hooks for one function; load ahead when a snapshot is being taken. Returns
    whether the hooks were registered (only inside Lambda's runtime)."""
    try:
        from snapshot_restore_py import (
            register_after_restore,
            register_before_snapshot,
        )
    except ImportError:
        return False
    if snapshotting():
        prepare(services, properties=properties, modules=modules, calls=calls)

    @register_before_snapshot
    def before_snapshot() -> None:
        close_connections(services)

    @register_after_restore
    def after_restore() -> None:
        logger.info("restored from a SnapStart snapshot")

    return True
