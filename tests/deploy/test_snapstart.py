"""SnapStart hooks (jetmail.aws.snapstart) as Lambda's Python runtime calls them: ``snapshot_restore_py`` is the
runtime's module, stood in for here by one that records the hooks so the test can run them in order."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator

import pytest

from jetmail.aws.snapstart import install
from jetmail.services import Services


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Callable[[], None]]]]:
    hooks: dict[str, list[Callable[[], None]]] = {"before": [], "after": []}
    module = types.ModuleType("snapshot_restore_py")
    module.register_before_snapshot = lambda f: hooks["before"].append(f) or f  # type: ignore[attr-defined]
    module.register_after_restore = lambda f: hooks["after"].append(f) or f  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    yield hooks


def test_outside_lambda_nothing_is_registered() -> None:
    assert install(object()) is False


def test_a_snapshot_loads_ahead_closes_nats_and_the_restored_function_reconnects(
        runtime: dict[str, list[Callable[[], None]]], services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a function's services during a SnapStart init, connected to NATS
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    svc = Services(services.settings)
    svc.queue.pending("email_transactional")
    monkeypatch.delitem(sys.modules, "jetmail.dashboard", raising=False)
    # WHEN the hooks are installed, and Lambda takes the snapshot and restores it
    assert install(svc, properties=("campaigns",), modules=("jetmail.dashboard",))
    assert "campaigns" in svc.__dict__ and "jetmail.dashboard" in sys.modules  # loaded ahead
    for hook in runtime["before"]:
        hook()
    # THEN no NATS connection went into the snapshot
    assert svc.queue._thread is None
    for hook in runtime["after"]:
        hook()
    # and the restored function uses the queue again, twice in a row
    assert isinstance(svc.queue.pending("email_transactional"), dict)
    assert isinstance(svc.queue.pending("email_transactional"), dict)
