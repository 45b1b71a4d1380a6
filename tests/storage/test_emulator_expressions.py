"""The local DynamoDB emulator keeps what it parsed of an expression and reads a Query page as stored: its answers
must stay DynamoDB's.

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


def test_a_query_page_is_read_as_stored_and_leaves_the_items_whole(table: Table, unique: str) -> None:
    """The emulator neither copies a Query's page nor sums an item's size twice: a projected or filtered page
    leaves the stored items whole, and pages still end at DynamoDB's 1 MB."""
    pk = f"PAGE#{unique}"
    for n in range(30):  # ~1.5 MB in all: more than one page
        table.put({"pk": pk, "sk": f"{n:03d}", "kind": "odd" if n % 2 else "even", "body": "x" * 50_000})
    projected, _ = table.query(pk=pk, limit=5, projection=("sk",))
    assert projected == [{"sk": f"{n:03d}"} for n in range(5)]
    odd, _ = table.query(pk=pk, limit=6, filter="kind = :k", params={":k": "odd"})
    assert [i["sk"] for i in odd] == ["001", "003", "005"]
    first, more = table.query(pk=pk)
    assert more is not None and 10 < len(first) < 30  # the 1 MB limit ended the page
    rest, last = table.query(pk=pk, start=more)
    assert last is None
    assert [i["sk"] for i in first + rest] == [f"{n:03d}" for n in range(30)]
    assert all(set(i) == {"pk", "sk", "kind", "body"} and len(i["body"]) == 50_000 for i in first + rest)
