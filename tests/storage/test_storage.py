"""The table adapter, its key registry, templates and API keys in DynamoDB (moto server over HTTP)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from jetmail.compliance.apikeys import ApiKeys
from jetmail.config import Settings
from jetmail.messaging.templates import TemplateNotFound, TemplateStore
from jetmail.messaging.templating import TemplateContent, TemplateValidationError
from jetmail.storage import keys
from jetmail.storage.catalogue import Catalogue
from jetmail.storage.table import ConditionFailed, Table
from stacktools import emulator


def content(name: str, locale: str = "en", subject: str = "Hi {{ first }}") -> TemplateContent:
    return TemplateContent(name=name, locale=locale, subject=subject, html="<p>Hello {{ first }}</p>")


def test_saving_twice_makes_versions_and_head_moves(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    # GIVEN a template saved twice
    first = store.save(content(f"t{unique}"))
    second = store.save(content(f"t{unique}", subject="Second {{ first }}"))
    # THEN versions count up and the head is the latest, history keeps both
    assert (first.version, second.version) == (1, 2)
    assert store.get(f"t{unique}", locale="en").subject == "Second {{ first }}"
    assert store.get(f"t{unique}", locale="en", version=1).subject == "Hi {{ first }}"
    assert [v.version for v in store.versions(f"t{unique}", locale="en")] == [1, 2]


def test_locale_fallback_chain(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    store.save(content(f"f{unique}", "en", subject="english"))
    store.save(content(f"f{unique}", "de", subject="deutsch"))
    assert store.resolve(f"f{unique}", "de-AT").subject == "deutsch"
    assert store.resolve(f"f{unique}", "fr").subject == "english"
    with pytest.raises(TemplateNotFound):
        store.resolve(f"missing{unique}", "en")


def test_invalid_template_is_not_stored(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    bad = TemplateContent(name=f"b{unique}", locale="en", subject="x", html="<p onclick='x()'>hi</p>")
    with pytest.raises(TemplateValidationError):
        store.save(bad)
    with pytest.raises(TemplateNotFound):
        store.get(f"b{unique}", locale="en")


def test_delete_removes_every_version(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    store.save(content(f"d{unique}"))
    store.save(content(f"d{unique}"))
    assert store.delete(f"d{unique}") == 3  # two versions and the head
    with pytest.raises(TemplateNotFound):
        store.resolve(f"d{unique}", "en")


def test_api_key_authenticates_until_revoked(table: Table) -> None:
    keys = ApiKeys(table)
    key, token = keys.create("ci", scopes=["send"])
    found = keys.authenticate(token)
    assert found is not None and found.key_id == key.key_id and found.allows("send") and not found.allows("admin")
    # a key with one character changed is refused
    assert keys.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.revoke(key.key_id)
    assert keys.authenticate(token) is None
    assert not keys.revoke(key.key_id)


def test_batch_get_reads_100_keys_a_request_and_only_the_named_attributes(table: Table, unique: str) -> None:
    # GIVEN 150 items, and keys for them and for one that does not exist
    pk = f"BATCHGET#{unique}"
    table.batch_put([{"pk": pk, "sk": f"{n:03d}", "n": n, "extra": "x"} for n in range(150)])
    wanted = [(pk, f"{n:03d}") for n in range(150)] + [(pk, "missing")]
    before = table.requests
    # WHEN they are read with a projection
    found = list(table.batch_get(wanted, consistent=True, projection=("sk", "n")))
    # THEN every item comes, in two requests, with the named attributes alone
    assert table.requests - before == 2
    assert sorted(item["n"] for item in found) == list(range(150))
    assert {frozenset(item) for item in found} == {frozenset({"sk", "n"})}
    # and nothing is read before the items are asked for
    lazy = table.batch_get(wanted)
    assert table.requests - before == 2
    assert len(list(lazy)) == 150


def test_a_query_between_two_sort_keys_reads_both_ends_and_can_project(table: Table, unique: str) -> None:
    pk = f"BETWEEN#{unique}"
    table.batch_put([{"pk": pk, "sk": sk, "v": sk.upper()} for sk in "abcde"])
    items, last = table.query(pk=pk, sk_between=("b", "d"), forward=False)
    assert ([i["sk"] for i in items], last) == (["d", "c", "b"], None)
    keys_only, _ = table.query(pk=pk, sk_prefix="c", projection=("pk", "sk"))
    assert keys_only == [{"pk": pk, "sk": "c"}]
    # a projection and a filter together keep their names apart
    filtered, _ = table.query(pk=pk, filter="#v = :v", names={"#v": "v"}, params={":v": "E"}, projection=("sk",))
    assert filtered == [{"sk": "e"}]


def test_a_forward_query_between_two_sort_keys_pages_through_exactly_that_range(table: Table, unique: str) -> None:
    pk = f"RANGE#{unique}"
    table.batch_put([{"pk": pk, "sk": f"k{n:03d}"} for n in range(60)])
    # pages of 7 from k010 to k049 (both included), each starting after the last one read
    found: list[str] = []
    start = None
    while True:
        items, start = table.query(pk=pk, sk_between=("k010", "k049"), limit=7, start=start)
        found += [i["sk"] for i in items]
        if not start:
            break
    assert found == [f"k{n:03d}" for n in range(10, 50)]
    # and without a limit, in one page
    assert [i["sk"] for i in table.query(pk=pk, sk_between=("k055", "k999"))[0]] == [f"k{n:03d}" for n in range(55, 60)]


def test_the_local_emulator_reports_how_long_each_operation_held_it(settings: Settings, table: Table,
                                                                    unique: str) -> None:
    def timings() -> dict[str, dict[str, float]]:
        return emulator(str(settings.aws_endpoint_url), "timings")

    before = timings().get("GetItem", {"count": 0, "total_ms": 0.0})
    table.get(f"TIMED#{unique}", "x")
    table.get(f"TIMED#{unique}", "y")
    after = timings()["GetItem"]
    assert after["count"] >= before["count"] + 2
    assert after["total_ms"] > before["total_ms"] and after["max_ms"] > 0


def test_the_local_emulator_refuses_an_item_over_400_kb_however_it_is_written(table: Table, unique: str) -> None:
    from botocore.exceptions import ClientError

    # GIVEN an item of ~300 KB over several attributes (the emulator checks the whole item's size once)
    part = "x" * 100_000
    table.put({"pk": f"BIG#{unique}", "sk": "ok", "a": part, "b": part, "c": part})
    assert table.get(f"BIG#{unique}", "ok")["c"] == part
    # WHEN one more attribute takes it past 400 KB: refused as DynamoDB refuses it, by PutItem and BatchWriteItem
    too_big = {"pk": f"BIG#{unique}", "sk": "over", "a": part, "b": part, "c": part, "d": part, "e": "y" * 10_000}
    with pytest.raises(ClientError, match=r"(?i)item size"):
        table.put(too_big)
    with pytest.raises(ClientError, match=r"(?i)item size"):
        table.batch_put([too_big])
    # THEN nothing of it was stored
    assert table.get(f"BIG#{unique}", "over") is None


def test_an_index_query_sees_every_write_delete_move_and_cancelled_transaction(table: Table, unique: str) -> None:
    a, b = f"IDXA#{unique}", f"IDXB#{unique}"

    def under(gsi: str) -> list[tuple[str, Any]]:
        return [(i["pk"], i.get("v")) for i in table.query(pk=gsi, index="gsi1")[0]]

    # GIVEN two items under index partition A (the index read once, so later writes must keep it)
    table.put({"pk": f"{a}#1", "sk": "x", "gsi1pk": a, "gsi1sk": "1", "v": 1})
    assert under(a) == [(f"{a}#1", 1)]
    table.put({"pk": f"{a}#2", "sk": "x", "gsi1pk": a, "gsi1sk": "2", "v": 2})
    # WHEN one is updated in place, the other moved to B by a put, then deleted
    table.update(f"{a}#1", "x", expression="SET v = :v", params={":v": 10})
    assert under(a) == [(f"{a}#1", 10), (f"{a}#2", 2)]
    table.put({"pk": f"{a}#2", "sk": "x", "gsi1pk": b, "gsi1sk": "2", "v": 20})
    assert under(a) == [(f"{a}#1", 10)] and under(b) == [(f"{a}#2", 20)]
    table.delete(f"{a}#2", "x")
    assert under(b) == []
    # AND a transaction that overwrites the first item, then fails on a condition, is undone in the index too
    with pytest.raises(ConditionFailed):
        table.transact([
            table.put_op({"pk": f"{a}#1", "sk": "x", "gsi1pk": b, "gsi1sk": "1", "v": 99}),
            table.put_op({"pk": f"{a}#3", "sk": "x", "gsi1pk": a, "gsi1sk": "3"}, condition="attribute_exists(pk)"),
        ])
    assert under(a) == [(f"{a}#1", 10)] and under(b) == []


def test_an_index_query_returns_its_partition_in_sort_key_order_either_way_and_in_pages(table: Table,
                                                                                       unique: str) -> None:
    gsi = f"IDXORD#{unique}"
    # GIVEN items written out of order, sort keys that differ late and a non-ASCII one, and equal sort keys
    # (an index key need not be unique: the table's own keys then order them)
    sort_keys = ["b", "a10", "a2", "\u00e9", "A", "a2", "a"]
    for n, sk in enumerate(sort_keys):
        table.put({"pk": f"{gsi}#{n}", "sk": "x", "gsi1pk": gsi, "gsi1sk": sk, "v": n})
    expected = sorted(((sk, f"{gsi}#{n}") for n, sk in enumerate(sort_keys)))
    # WHEN the partition is read forwards, backwards, and two items a page
    forward = [(i["gsi1sk"], i["pk"]) for i in table.query(pk=gsi, index="gsi1")[0]]
    backward = [(i["gsi1sk"], i["pk"]) for i in table.query(pk=gsi, index="gsi1", forward=False)[0]]
    paged, start = [], None
    while True:
        items, start = table.query(pk=gsi, index="gsi1", limit=2, start=start)
        paged += [(i["gsi1sk"], i["pk"]) for i in items]
        if not start:
            break
    # THEN each is the partition in order, every item once
    assert forward == expected
    assert backward == expected[::-1]
    assert paged == expected


def test_put_and_update_operations_ride_in_one_transaction(table: Table, unique: str) -> None:
    pk = f"TXOPS#{unique}"
    table.put({"pk": pk, "sk": "counter", "n": 1})
    table.put({"pk": pk, "sk": "taken"})
    # WHEN the put's condition fails THEN nothing is written and the failed operation is named
    with pytest.raises(ConditionFailed) as failed:
        table.transact([table.update_op(pk, "counter", expression="ADD n :one", params={":one": 1}),
                        table.put_op({"pk": pk, "sk": "taken", "n": 9}, condition="attribute_not_exists(pk)")])
    assert failed.value.failed == (1,)
    assert {i["sk"]: i.get("n") for i in table.query_all(pk=pk)} == {"counter": 1, "taken": None}
    # WHEN every condition holds THEN both are written
    table.transact([table.update_op(pk, "counter", expression="ADD n :one", params={":one": 1}),
                    table.put_op({"pk": pk, "sk": "mark", "at": 1.5}, condition="attribute_not_exists(pk)")])
    assert {i["sk"]: i.get("n", i.get("at")) for i in table.query_all(pk=pk)} == {"counter": 2, "mark": 1.5,
                                                                                 "taken": None}


class Missing(LookupError):
    pass


def test_a_catalogue_adds_finds_lists_and_removes_its_rows(table: Table, unique: str) -> None:
    things = Catalogue(table, row=lambda thing_id: keys.Key(f"THING#{thing_id}", "META"),
                       partition=f"THINGS{unique}", ids=re.compile(r"^thg_[0-9]+$"), missing=Missing)
    things.add("thg_1", "2026-01-02T00:00:00+00:00", name="second")
    things.add("thg_2", "2026-01-01T00:00:00+00:00", name="first")
    with pytest.raises(ConditionFailed):
        things.add("thg_1", "2026-01-03T00:00:00+00:00", name="again")
    assert things.get("thg_1")["name"] == "second"
    assert [t["name"] for t in things.all()] == ["first", "second"]
    # an id that cannot be one costs no request
    before = table.requests
    with pytest.raises(Missing):
        things.get("nope")
    with pytest.raises(Missing):
        things.remove("nope")
    assert table.requests == before
    things.remove("thg_1")
    with pytest.raises(Missing):
        things.remove("thg_1")
    with pytest.raises(Missing):
        things.get("thg_1")


def test_every_row_in_the_key_registry_names_a_repository_that_exists() -> None:
    for entity in keys.ENTITIES:
        module, _, name = entity.owner.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name, None), type), entity


@pytest.mark.parametrize("name", ["jetmail.compliance.gdpr", "jetmail.reporting.reports"])
def test_modules_that_read_others_rows_ask_their_owners(name: str) -> None:
    # the export and erasure, and the reports, reach rows only through the repositories that own them
    path = Path(importlib.import_module(name).__file__ or "")
    imported = {node.module or "" for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m == "jetmail.storage" or m.startswith("jetmail.storage.")}
