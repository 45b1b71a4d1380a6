"""The local DynamoDB emulator keeps what it parsed of an expression: its answers must stay DynamoDB's.

It keeps each distinct UpdateExpression's tree (and copies it for every update) and each condition's tree by
the names and values the condition refers to; these requests would go wrong if a kept tree carried one
request's values or changes into the next.
"""

from __future__ import annotations

import pytest

from jetmail.storage.table import ConditionFailed, Table


def test_one_condition_with_other_values_is_decided_by_each_requests_own(table: Table, unique: str) -> None:
    table.put({"pk": f"EXPR#{unique}", "sk": "a", "state": "open", "n": 0})
    condition = "#s = :want"
    names = {"#s": "state"}
    # the same condition and the same other values, twice refused, then met
    for want in ("closed", "paused"):
        with pytest.raises(ConditionFailed):
            table.update(f"EXPR#{unique}", "a", expression="SET n = n + :one", names=names, condition=condition,
                         params={":one": 1, ":want": want})
    after = table.update(f"EXPR#{unique}", "a", expression="SET n = n + :one", names=names, condition=condition,
                         params={":one": 1, ":want": "open"})
    assert after["n"] == 1
    # and refused again once a request's value no longer matches, however often the pair was seen
    with pytest.raises(ConditionFailed):
        table.update(f"EXPR#{unique}", "a", expression="SET n = n + :one", names=names, condition=condition,
                     params={":one": 1, ":want": "closed"})
    assert table.get(f"EXPR#{unique}", "a")["n"] == 1  # type: ignore[index]


def test_one_update_expression_applies_each_requests_values_to_each_item(table: Table, unique: str) -> None:
    expression = ("SET attempts = if_not_exists(attempts, :zero) + :step, "
                  "seen = list_append(if_not_exists(seen, :none), :one)")
    for item, steps in (("x", (1, 2, 3)), ("y", (10,))):
        for step in steps:
            table.update(f"EXPR#{unique}", item, expression=expression,
                         params={":zero": 0, ":step": step, ":none": [], ":one": [f"{item}{step}"]})
    x, y = table.get(f"EXPR#{unique}", "x"), table.get(f"EXPR#{unique}", "y")
    assert x is not None and y is not None
    assert (x["attempts"], x["seen"]) == (6, ["x1", "x2", "x3"])
    assert (y["attempts"], y["seen"]) == (10, ["y10"])
