"""Fixtures for the fault scenarios: each gets a private stack (see faultkit.FaultStack)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultkit import FaultStack

from jetmail.devstack.stack import StackState


@pytest.fixture
def fault_stack(stack: StackState, tmp_path: Path) -> Iterator[Callable[..., FaultStack]]:
    """``fault_stack(sink_env=..., worker_env=...)``: a FaultStack, closed after the test."""
    made: list[FaultStack] = []

    def make(**options: dict[str, str]) -> FaultStack:
        made.append(FaultStack(stack, tmp_path / f"s{len(made)}", **options))
        return made[-1]

    yield make
    for own in made:
        own.close()
