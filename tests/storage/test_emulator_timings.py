"""What the local DynamoDB emulator reports of the time its requests held it (``/_jetmail/timings``)."""

from __future__ import annotations

from typing import Any

from jetmail.devstack.stack import StackState
from jetmail.storage.table import Table
from stacktools import emulator


def timings(stack: StackState, *, post: bool = False) -> dict[str, Any]:
    return emulator(stack.services["moto"].url, "timings", post=post)


def test_the_slowest_request_of_each_operation_is_described_and_starts_afresh_on_a_post(
        stack: StackState, table: Table, unique: str) -> None:
    # GIVEN the slowest requests started afresh
    table.put({"pk": f"TIMING#{unique}", "sk": "a", "value": 1})
    fresh = timings(stack, post=True)
    assert fresh and all(row["max_ms"] == 0 and "slowest" not in row for row in fresh.values()), fresh
    # WHEN a Query is made
    items, _ = table.query(pk=f"TIMING#{unique}", limit=5)
    assert [item["sk"] for item in items] == ["a"]
    # THEN it is the slowest Query since, named by its table, the partition it read and its limit
    row = timings(stack)["Query"]
    assert row["max_ms"] > 0
    assert table.name in row["slowest"] and f"TIMING#{unique}" in row["slowest"] and "limit 5" in row["slowest"]
    # AND the counts and totals were kept
    assert row["count"] >= fresh.get("Query", {"count": 0})["count"] + 1
