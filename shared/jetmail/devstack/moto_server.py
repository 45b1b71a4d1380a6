"""moto in server mode for the local stack, with every request applied in isolation.

moto's own server handles requests on concurrent threads without isolating them, so two
conditional updates of one item can interleave (a lost ADD, a condition checked against a stale
item, "dictionary changed size during iteration" in a transaction). DynamoDB applies each request
atomically; serialising requests here gives the local stack the same guarantee, which jetmail's
exactly-once counters and claims rely on.

Transactions restore only the items they touched when one of their actions fails: moto copies every
table a transaction names before applying it, so each TransactWriteItems cost time and memory in
proportion to the table (seconds per transaction, gigabytes of garbage, once a test run had stored
a few campaigns). A Query of the table reads only the partition it names, and a forward one only its
page: moto sorts every item of the table on each Query, so a page of one list cost time in proportion
to everything stored; a partition's key order is now kept until a key is added or removed.
A Query of a global secondary index reads only the index partition it names: moto scans the whole
table for every such Query (seconds per Query once a test run or a benchmark had stored some 100,000
items, all of it holding up every other request); each index's partitions are kept from the table's
first write on, as items are written, updated, deleted and restored. An item's size is checked once per
item (moto summed every attribute's size as it added each one), and each distinct UpdateExpression is
parsed once (moto parsed it again for every request), its validator's copy of the tree unpickled rather than
deep-copied; a condition is parsed once per expression and the names and values it refers to (moto parsed it
twice per request), and moto's per-request and per-node lookups of its own methods and processors (and
which processor a node's type goes to) are made once (together a third of an UpdateItem's time). A
Query's page is not deep-copied (nothing after changes it) and each item's size is summed once per Query (a
third of a Query's time). Item reads (GetItem, BatchGetItem, Query, Scan) are answered as plain JSON: moto's
generic serializer walks the output shape for every attribute of every item, most of what a page of items cost.
What survives a full garbage collection is frozen
(``GcPauses``): a full collection walked every stored item, holding up every request for 1.3 s at a time.
The server is waitress, which keeps a client's connection for its next request: moto's own (werkzeug's
development server) closes every connection after one answer, so each DynamoDB call of the local stack
opened a connection and started a thread.

For the reliability suite, a share of DynamoDB requests can be made to fail:
``POST /_jetmail/faults {"share": 0.05, "errors": ["ThrottlingException", "stall"], "seed": 1}``.
Each failed request gets one of ``errors`` (chosen at random): a DynamoDB error name is answered
with that error (HTTP 400, as DynamoDB does for throttling), ``stall`` holds the request for
``stall_seconds`` (default 12, past the SDK's read timeout) and then drops it unapplied, and
``lost_reply`` applies the request and then holds its reply that long (the SDK retries a write that
already happened, as after a real timeout).
SES v2 ``GetAccount`` (which moto lacks) answers with the account's sending quota, so workers on the
SES provider read their limits locally as they do in AWS; ``POST /_jetmail/ses-quota
{"max_send_rate": 200, "max_24_hour_send": 100000}`` sets it (default: SES's production quota).

``operations`` limits the faults to some operations (e.g. ``["UpdateItem"]``) and ``limit`` to a number
of faults in all (``{"share": 1, "limit": 1, ...}`` fails exactly the next request). ``GET /_jetmail/faults``
shows the settings and what was injected; ``{"share": 0}`` turns injection off.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import functools
import gc
import io
import json
import logging
import os
import pickle
import random
import re
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

import waitress  # type: ignore[import-untyped]
from moto import backends as moto_backends
from moto.core import responses as moto_responses
from moto.core.common_types import TYPE_RESPONSE
from moto.core.responses import ActionResult, BaseResponse
from moto.dynamodb.comparisons import ConditionExpressionParser, get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    ItemSizeTooLarge,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models import table as moto_table
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table
from moto.dynamodb.parsing import validators as moto_validators
from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node  # type: ignore[attr-defined]
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.dynamodb.responses import DynamoHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from pydantic import BaseModel, Field, ValidationError

STALL = "stall"
LOST_REPLY = "lost_reply"


class FaultSettings(BaseModel):
    share: float = Field(default=0.0, ge=0, le=1)
    errors: list[str] = Field(default_factory=lambda: ["ProvisionedThroughputExceededException"], min_length=1)
    seed: int | None = None
    stall_seconds: float = Field(default=12.0, ge=0, le=600)
    operations: list[str] | None = None
    limit: int | None = Field(default=None, ge=0)  # inject at most this many faults, then none


class SesQuota(BaseModel):
    max_send_rate: float = Field(default=14.0, gt=0)
    max_24_hour_send: float = Field(default=50000.0)  # -1: unlimited, as SES says it

    def account(self) -> dict[str, Any]:
        """The SES v2 ``GetAccount`` answer for this quota."""
        return {"SendQuota": {"Max24HourSend": self.max_24_hour_send, "MaxSendRate": self.max_send_rate,
                              "SentLast24Hours": 0.0},
                "SendingEnabled": True, "ProductionAccessEnabled": True, "EnforcementStatus": "HEALTHY",
                "DedicatedIpAutoWarmupEnabled": False}


class Faults:
    """Decides which DynamoDB request fails how, and counts what it injected."""

    def __init__(self) -> None:
        self.settings = FaultSettings()
        self.rng = random.Random()
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()

    def configure(self, settings: FaultSettings) -> None:
        with self.lock:
            self.settings = settings
            self.rng = random.Random(settings.seed)
            self.injected = Counter()

    def pick(self, operation: str) -> str | None:
        with self.lock:
            s = self.settings
            if not s.share or (s.operations is not None and operation not in s.operations):
                return None
            if s.limit is not None and sum(self.injected.values()) >= s.limit:
                return None
            if self.rng.random() >= s.share:
                return None
            fault = self.rng.choice(s.errors)
            self.injected[fault] += 1
            return fault

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {**self.settings.model_dump(), "injected": dict(self.injected)}


def _json(start_response: Callable[..., Any], status: str, payload: Any,
          content_type: str = "application/json") -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("x-amzn-RequestId", uuid.uuid4().hex)])
    return [body]


class _TouchedItems:
    """The items a transaction changes, as they were before it, to put back if it is cancelled."""

    def __init__(self) -> None:
        self.before: dict[tuple[str, str], tuple[Table, DynamoType, DynamoType | None, Item | None]] = {}

    def keep(self, backend: DynamoDBBackend, table_name: str, key: dict[str, Any]) -> Item | None:
        """Remember the item under ``key`` (each key once per transaction, as DynamoDB requires) and return it."""
        marker = (table_name, json.dumps(key, sort_keys=True))
        if marker in self.before:
            raise MultipleTransactionsException()
        table = backend.get_table(table_name)
        hash_value, range_value = backend.get_keys_value(table, key)
        current = table.get_item(hash_value, range_value)
        self.before[marker] = (table, hash_value, range_value, copy.deepcopy(current))
        return current

    def restore(self) -> None:
        for table, hash_value, range_value, item in self.before.values():
            _forget(table, hash_value)
            if item is None:
                table.delete_item(hash_value, range_value)
            elif range_value is None:
                cast(dict[DynamoType, Item], table.items)[hash_value] = item
            else:
                table.items[hash_value][range_value] = item
            if item is not None:
                _indexed(table, item)


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """DynamoDB's TransactWriteItems on moto's tables: every action applies, or none does."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    touched = _TouchedItems()
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
    for action in transact_items:
        if len(action) > 1:
            touched.restore()
            raise TransactWriteSingleOpException
        old_item: dict[str, Any] | None = None
        try:
            kind, op = next(iter(action.items()))
            if kind not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if kind == "Put":
                table = self.get_table(table_name)
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            current = touched.keep(self, table_name, key)
            condition = op.get("ConditionExpression")
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if condition is not None and not get_filter_expression(condition, names, values).expr(current):
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                    old_item = current.to_json()["Attributes"]
                raise ConditionalCheckFailed(item=old_item)
            if kind == "Put":
                self.put_item(table_name, op["Item"], condition_expression=condition,
                              expression_attribute_names=names, expression_attribute_values=values)
            elif kind == "Delete":
                self.delete_item(table_name, key, condition_expression=condition,
                                 expression_attribute_names=names, expression_attribute_values=values)
            elif kind == "Update":
                self.update_item(table_name, key, update_expression=op["UpdateExpression"],
                                 condition_expression=condition, expression_attribute_names=names,
                                 expression_attribute_values=values)
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            touched.restore()
            raise
        except ConditionalCheckFailed as exc:
            errors.append(("ConditionalCheckFailed", str(exc.message), old_item))
        except Exception as exc:  # DynamoDB reports any other failure as that action's reason
            errors.append((type(exc).__name__, str(exc), old_item))
    if any(code is not None for code, _, _ in errors):
        touched.restore()
        raise TransactionCanceledException(errors)


DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]

_moto_query = Table.query
_moto_all_items = Table.all_items
_moto_item_size = Item.size
_moto_put_item = Table.put_item
_moto_delete_item = Table.delete_item
_moto_update_item = DynamoDBBackend.update_item
_querying = threading.local()
# each partition's range keys in order (and their values, to bisect), kept until its key set changes
_orders: weakref.WeakKeyDictionary[Table, dict[DynamoType, tuple[list[DynamoType], list[Any]]]] = (
    weakref.WeakKeyDictionary())


def _forget(table: Table, hash_value: DynamoType) -> None:
    orders = _orders.get(table)
    if orders:
        orders.pop(hash_value, None)


def _put_item(self: Table, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Item:
    item = _moto_put_item(self, item_attrs, *args, **kwargs)
    if self.range_key_attr:
        _forget(self, item.hash_key)
    _indexed(self, item)
    return item


def _delete_item(self: Table, hash_key: DynamoType, range_key: DynamoType | None) -> Item | None:
    _forget(self, hash_key)
    for index in _indexes.get(self, {}).values():
        if index is not None:
            index.drop(_item_key(hash_key, range_key))
    return _moto_delete_item(self, hash_key, range_key)


def _item_key(hash_key: DynamoType, range_key: DynamoType | None) -> tuple[Any, Any]:
    return hash_key.cast_value, None if range_key is None else range_key.cast_value


class _IndexPartitions:
    """The items of one global secondary index, by the value of its hash key."""

    def __init__(self, table: Table, attribute: str) -> None:
        self.attribute = attribute
        self.partitions: dict[Any, dict[tuple[Any, Any], Item]] = {}
        self.where: dict[tuple[Any, Any], Any] = {}
        for item in _moto_all_items(table):
            self.place(item)

    def place(self, item: Item) -> None:
        """File ``item`` (the one now stored under its key) under its current hash value, or nowhere."""
        key = _item_key(item.hash_key, item.range_key)
        self.drop(key)
        value = item.attrs.get(self.attribute)
        if value is not None:
            self.partitions.setdefault(value.cast_value, {})[key] = item
            self.where[key] = value.cast_value

    def drop(self, key: tuple[Any, Any]) -> None:
        value = self.where.pop(key, None)
        if value is not None:
            partition = self.partitions[value]
            partition.pop(key, None)
            if not partition:
                del self.partitions[value]


# per table, its global indexes' partitions (None: an index keyed on more than one attribute), built from the
# table's items when first needed (a table's first write, mostly: an empty table) and kept up to date from then on
_indexes: weakref.WeakKeyDictionary[Table, dict[str, _IndexPartitions | None]] = weakref.WeakKeyDictionary()


def _index(table: Table, name: str) -> _IndexPartitions | None:
    """The partitions of the global index ``name`` (None for an index keyed on more than one attribute)."""
    found = _indexes.setdefault(table, {})
    if name not in found:
        index = next((i for i in table.global_indexes if i.name == name), None)
        hashes = [] if index is None else [k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH"]
        found[name] = _IndexPartitions(table, hashes[0]) if len(hashes) == 1 else None
    return found[name]


def _indexed(table: Table, item: Item) -> None:
    """File a written item in each global index: every index is kept from the table's first write on, so no
    Query pays for reading the whole table (20,000 contacts took a campaign's first Query ~1 s)."""
    for index in table.global_indexes:
        partitions = _index(table, index.name)
        if partitions is not None:
            partitions.place(item)


def _update_item(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Item:
    # an update changes the stored item in place: file it again (an index key it sets moves it)
    item = _moto_update_item(self, table_name, *args, **kwargs)
    _indexed(self.get_table(table_name), item)
    return item


def _order(table: Table, hash_key: DynamoType) -> tuple[list[DynamoType], list[Any]]:
    orders = _orders.setdefault(table, {})
    if hash_key not in orders:
        # the order moto's Query sorts in (DynamoType compares its cast values)
        keys = sorted(table.items[hash_key], key=lambda k: k.cast_value)
        orders[hash_key] = (keys, [k.cast_value for k in keys])
    return orders[hash_key]


def _window(table: Table, hash_key: DynamoType, range_comparison: str | None, range_objs: list[DynamoType],
            limit: int | None, start: dict[str, Any] | None) -> list[Item]:
    """The items of a forward Query's page and what follows it: from its exclusive start (or the first key
    ``begins_with`` can match), ``limit`` + 1 of them, or past 1 MB without a limit. moto's own loop then
    applies the key condition and the limits to these as it would to the whole partition."""
    partition = table.items[hash_key]
    keys, values = _order(table, hash_key)
    low, high = 0, len(keys)
    if start and table.range_key_attr in start:
        low = bisect.bisect_right(values, DynamoType(start[table.range_key_attr]).cast_value)
    if range_comparison is None:
        pass
    elif range_comparison.upper() == "BEGINS_WITH":
        low = max(low, bisect.bisect_left(values, range_objs[0].cast_value))
    elif range_comparison.upper() == "BETWEEN":
        low = max(low, bisect.bisect_left(values, range_objs[0].cast_value))
        high = bisect.bisect_right(values, range_objs[1].cast_value)
    else:
        # other comparisons may skip keys before their matches: the rest of the partition, unbounded
        return [partition[k] for k in keys[low:]]
    if limit:
        return [partition[k] for k in keys[low:min(high, low + limit + 1)]]
    window: list[Item] = []
    size = 0
    for key in keys[low:high]:
        item = partition[key]
        window.append(item)
        size += item.size()
        if size > RESULT_SIZE_LIMIT:
            break
    return window


def _query(self: Table, hash_key: DynamoType | None, range_comparison: str | None, range_objs: list[DynamoType],
           limit: int | None, exclusive_start_key: dict[str, Any] | None, scan_index_forward: bool,
           projection_expressions: Any, index_name: str | None = None, *args: Any, **kwargs: Any) -> Any:
    """moto's Query, with the candidate items of a base-table Query taken from its partition alone, and
    of a forward one from its page alone: a page costs the same however large the partition is."""
    base = index_name is None and self.range_key_attr is not None and hash_key is not None
    index = _index(self, index_name) if index_name is not None and hash_key is not None else None
    if index is not None:
        assert hash_key is not None
        _querying.items = list(index.partitions.get(hash_key.cast_value, {}).values())
    elif hash_key is None or not base or hash_key not in self.items:
        _querying.items = [] if base else None
    elif scan_index_forward and not set(kwargs) - {"hash_key_conditions", "range_key_conditions"}:
        _querying.items = _window(self, hash_key, range_comparison, range_objs, limit, exclusive_start_key)
    else:
        _querying.items = list(self.items[hash_key].values())
    _querying.sizes = {}
    try:
        # moto's Table.query says int and dict, yet its backend hands on the request's None for both
        return _moto_query(self, hash_key, range_comparison, range_objs,
                           limit, exclusive_start_key,  # type: ignore[arg-type]
                           scan_index_forward, projection_expressions, index_name, *args, **kwargs)
    finally:
        _querying.items = _querying.sizes = None


def _item_size(self: Item) -> int:
    """An item's size, worked out once per Query: moto's Query asked each candidate's twice (its 1 MB page
    limit), summing every attribute each time. Outside a Query (writes check the 400 KB limit) as moto does."""
    sizes: dict[int, int] | None = getattr(_querying, "sizes", None)
    if sizes is None:
        return _moto_item_size(self)
    size = sizes.get(id(self))
    if size is None:
        size = sizes[id(self)] = _moto_item_size(self)
    return size


class _TableCopy:
    """The ``copy`` module as moto's table code sees it, except that a Query's page is not deep-copied: moto
    copied every item of it, though nothing after changes them (an index's or the request's projection
    makes new items; the filter and the answer only read them), a quarter of a Query's time."""

    copy = staticmethod(copy.copy)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if getattr(_querying, "sizes", None) is not None and isinstance(value, list) and memo is None:
            return list(value)
        return copy.deepcopy(value, memo)


def _all_items(self: Table) -> list[Item]:
    items = getattr(_querying, "items", None)
    # a Query's candidates: moto keeps those with its hash key and sorts them by range key itself
    return _moto_all_items(self) if items is None else items


def _sorted_items(self: Table, hash_key_attrs: list[str], range_key_attrs: list[str | None],
                  items: list[Item]) -> list[Item]:
    """moto's sort of a Query's candidates, on each key's value: moto compared them as DynamoType objects,
    which converts both values on every comparison (a global index partition of 2,000 items took ~60 ms)."""
    attributes = self._generate_attr_to_sort_by(hash_key_attrs, range_key_attrs)
    items.sort(key=lambda item: tuple(_sort_value(item.attrs[name]) for name in attributes))
    return items


def _sort_value(value: DynamoType) -> Any:
    # a string is its own cast value, and most keys are strings
    return value.value if value.type == "S" else value.cast_value


def _item_init(self: Item, hash_key: DynamoType, range_key: DynamoType | None, attrs: dict[str, Any]) -> None:
    """moto's Item, with its size checked once: moto added the attributes one by one, each addition summing the
    size of every attribute already there (a quadratic cost, half of a 25-row BatchWriteItem). The sizes only
    grow, so the last of those checks, the whole item's size, is the one that can fail."""
    self.hash_key = hash_key
    self.range_key = range_key
    self.attrs = LimitedSizeDict()
    dict.update(self.attrs, {key: DynamoType(value) for key, value in attrs.items()})
    if self.size() > 405000:  # moto's limit: DynamoDB's 400 KB, as moto measures an item
        raise ItemSizeTooLarge


_moto_parse_update = UpdateExpressionParser.make


@functools.lru_cache(maxsize=1024)
def _parsed_update(expression: str) -> Any:
    """moto's parse of an UpdateExpression, once per distinct expression. moto parsed it twice per UpdateItem
    (the handler, then the backend) and once per update of a TransactWriteItems, for the same few expressions
    each time; its validator works on a deep copy of the tree, so one parsed tree serves every request. The
    tree is pickled too: the validator's copy of it is unpickled from that (``_validator_copy``)."""
    tree = _moto_parse_update(expression)
    tree._jetmail_pickled = pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL)  # after the dump: no copy has it
    return tree


def _validator_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """The deep copy moto's update validator makes of a parsed tree (then changes in place), unpickled from the
    parse's own pickle: 30-odd microseconds where ``copy.deepcopy`` took 170 for a four-action SET."""
    pickled = getattr(value, "_jetmail_pickled", None) if memo is None else None
    # the bytes are the emulator's own pickle of a tree it parsed, never anything a client sent
    return pickle.loads(pickled) if pickled is not None else copy.deepcopy(value, memo)  # noqa: S301


def _processing(self: DepthFirstTraverser) -> tuple[dict[type, Callable[..., Any]], tuple[type, ...]]:
    # a traverser's map of node types to processors is the same for its whole life (each is made for one
    # request): moto built it anew twice for every node of the tree it walks
    found: tuple[dict[type, Callable[..., Any]], tuple[type, ...]] | None = self.__dict__.get("_jetmail_processing")
    if found is None:
        mapping = self._processing_map()
        found = self.__dict__["_jetmail_processing"] = (mapping, tuple(mapping))
    return found


# which of a traverser class's node types (by position in its map) a node class is processed as, -1 for none;
# moto asked ``isinstance`` against each (abstract) node class for every node and traverser
_processed_as: dict[tuple[type, type], int] = {}


@functools.lru_cache(maxsize=256)
def _is_node(kind: type) -> bool:
    return issubclass(kind, Node)


def _traverse_node_recursively(self: DepthFirstTraverser, node: Any, child_id: int = -1) -> Any:
    """moto's depth-first walk, bottom up, each node given to the first processor its type matches, as moto's
    is; what a node type matches is worked out once per traverser class and node class."""
    kind: type = type(node)
    if not _is_node(kind):
        return node
    parent_node = node.parent
    if node.children is not None:
        for i, child_node in enumerate(node.children):
            self.pre_processing_of_child(node, i)
            self.traverse_node_recursively(child_node, i)
    mapping, kinds = _processing(self)
    key = (type(self), kind)
    position = _processed_as.get(key)
    if position is None:
        position = _processed_as[key] = next((n for n, k in enumerate(kinds) if issubclass(kind, k)), -1)
    if position >= 0:
        node = mapping[kinds[position]](node)
        node.parent = parent_node
        if parent_node:
            parent_node.children[child_id] = node
    return node


_moto_condition_parse = ConditionExpressionParser.parse
_conditions: dict[tuple[str, str, str], tuple[Any, tuple[str, ...], tuple[str, ...]]] = {}
CONDITIONS_KEPT = 4096
_PLACEHOLDER = re.compile(r"[:#][A-Za-z0-9_]+")


def _condition_parse(self: ConditionExpressionParser) -> Any:
    """moto's parse of a condition or filter expression, once per expression with its names and values: moto
    parsed it twice per request (the handler checks it, then the backend applies it). The tree is only
    evaluated against items, never changed; the names and values the parse found are given back as moto's do.
    Kept by the names and values the expression refers to (an update's other values change on every request)."""
    expression = self.condition_expression or ""
    names, values = self.expression_attribute_names or {}, self.expression_attribute_values or {}
    used = sorted(set(_PLACEHOLDER.findall(expression)))
    try:
        key = (expression, json.dumps({u: names.get(u) for u in used if u[0] == "#"}),
               json.dumps({u: values.get(u) for u in used if u[0] == ":"}))
    except TypeError:  # a value JSON cannot hold as it is
        return _moto_condition_parse(self)
    found = _conditions.get(key)
    if found is None:
        tree = _moto_condition_parse(self)  # raises for an invalid expression: nothing kept
        if len(_conditions) >= CONDITIONS_KEPT:
            _conditions.clear()
        found = _conditions[key] = (tree, tuple(self.expr_attr_names_found), tuple(self.expr_attr_values_found))
    else:
        self.expr_attr_names_found.extend(found[1])
        self.expr_attr_values_found.extend(found[2])
    return found[0]


_moto_method_names = moto_responses.method_names_from_class  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=64)
def _method_names(clazz: type) -> tuple[str, ...]:
    """A response class's method names, once per class: moto listed them (``inspect.getmembers``) per request."""
    return tuple(_moto_method_names(clazz))


UpdateExpressionParser.make = staticmethod(_parsed_update)
moto_validators.deepcopy = _validator_copy  # type: ignore[attr-defined,assignment]
DepthFirstTraverser.traverse_node_recursively = _traverse_node_recursively
ConditionExpressionParser.parse = _condition_parse  # type: ignore[method-assign]
moto_responses.method_names_from_class = _method_names  # type: ignore[attr-defined,assignment]
Item.__init__ = _item_init  # type: ignore[method-assign]
Table.sorted_items = _sorted_items  # type: ignore[method-assign]
Table.query = _query  # type: ignore[method-assign]
Item.size = _item_size  # type: ignore[method-assign]
moto_table.copy = _TableCopy  # type: ignore[attr-defined,assignment]
DynamoDBBackend.update_item = _update_item  # type: ignore[method-assign]
Table.all_items = _all_items  # type: ignore[method-assign]
Table.put_item = _put_item  # type: ignore[method-assign]
Table.delete_item = _delete_item  # type: ignore[method-assign]

# operations whose result moto already holds in DynamoDB's wire form, keys and all (DeleteItem's carries a
# member the API does not have, so it keeps moto's serialiser)
_WIRE_RESULTS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems", "PutItem", "UpdateItem",
                           "BatchWriteItem", "TransactWriteItems"})
_moto_serialized = DynamoHandler.serialized


def _serialized(self: BaseResponse, action_result: ActionResult) -> TYPE_RESPONSE:
    """A successful item read or write as JSON: moto's shape-walking serialiser would give the same."""
    if self._get_action() in _WIRE_RESULTS and not isinstance(action_result.result, Exception):
        try:
            body = json.dumps(action_result.result)
        except TypeError:  # a value JSON cannot hold as it is (binary): moto's serializer encodes it
            pass
        else:
            return 200, {"Content-Type": "application/json", **self.response_headers, "status": 200}, body
    return _moto_serialized(self, action_result)


DynamoHandler.serialized = _serialized  # type: ignore[method-assign]


class GcPauses:
    """The emulator's garbage collections by generation: count, total and longest pause.

    Its heap holds every stored item as Python objects, and a collection of the oldest generation walked all
    of them while the request that triggered it waited, and every request queued behind it: 1.3 s once per
    20,000-recipient campaign, the slowest request of the run. ``freeze_survivors`` (called between requests)
    moves what survived such a collection out of the collector's reach (``gc.freeze``), so the next one walks
    only what was stored since. Stored items are freed by their reference counts as before; a reference cycle
    among frozen objects would stay, which an emulator's lifetime can afford."""

    def __init__(self) -> None:
        self.by_generation: dict[int, list[float]] = {}  # generation -> [count, total s, longest s]
        self._started = 0.0
        self._freeze_due = False
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        held = self.by_generation.setdefault(info["generation"], [0, 0.0, 0.0])
        held[0] += 1
        held[1] += took
        held[2] = max(held[2], took)
        if info["generation"] == 2:
            self._freeze_due = True

    def freeze_survivors(self) -> None:
        if self._freeze_due:
            self._freeze_due = False
            gc.freeze()


class Serialized:
    """Applies one request at a time, and counts DynamoDB requests by operation for the cost
    benchmarks (``GET /_jetmail/requests``), with the time each operation held the emulator
    (``GET /_jetmail/timings``: count, total and slowest, in ms, and what the slowest request was; with the
    garbage collections' pauses). ``POST /_jetmail/timings`` starts the slowest afresh (a benchmark's
    phase of its own)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.gc = GcPauses()
        self.counts: Counter[str] = Counter()
        self.held: dict[str, list[float]] = {}  # operation -> [count, total s, slowest s]
        self.slowest: dict[str, str] = {}  # operation -> what its slowest request was (``_described``)
        self.faults = Faults()
        self.ses_quota = SesQuota()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/_jetmail/requests":
            return _json(start_response, "200 OK", dict(self.counts))
        if path == "/_jetmail/timings":
            # garbage collections run inside the requests that trigger them: their time is counted there too
            if environ.get("REQUEST_METHOD") == "POST":
                for row in (*self.held.values(), *self.gc.by_generation.values()):
                    row[2] = 0.0
                self.slowest.clear()
            rows = {**self.held, **{f"gc generation {gen}": row for gen, row in self.gc.by_generation.items()}}
            return _json(start_response, "200 OK", {op: {"count": int(n), "total_ms": round(total * 1000, 1),
                                                         "max_ms": round(most * 1000, 1),
                                                         **({"slowest": self.slowest[op]} if op in self.slowest
                                                            else {})}
                                                    for op, (n, total, most) in rows.items()})
        if path == "/_jetmail/faults":
            if environ.get("REQUEST_METHOD") == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                try:
                    self.faults.configure(FaultSettings.model_validate_json(environ["wsgi.input"].read(length)))
                except ValidationError as exc:
                    return _json(start_response, "400 Bad Request", {"error": str(exc)})
            return _json(start_response, "200 OK", self.faults.report())
        if path == "/_jetmail/ses-quota":
            if environ.get("REQUEST_METHOD") == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                try:
                    self.ses_quota = SesQuota.model_validate_json(environ["wsgi.input"].read(length))
                except ValidationError as exc:
                    return _json(start_response, "400 Bad Request", {"error": str(exc)})
            return _json(start_response, "200 OK", self.ses_quota.model_dump())
        if path == "/v2/email/account" and environ.get("REQUEST_METHOD") == "GET":
            return _json(start_response, "200 OK", self.ses_quota.account())
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            operation = target.split(".", 1)[-1]
            self.counts[operation] += 1
            fault = self.faults.pick(operation)
            if fault == STALL:
                # outside the lock: a stalled request holds up nobody else, and is never applied
                time.sleep(self.faults.settings.stall_seconds)
                return _json(start_response, "500 Internal Server Error",
                             {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                              "message": "request stalled and dropped"}, "application/x-amz-json-1.0")
            if fault == LOST_REPLY:
                with self.lock:
                    reply = list(self.app(environ, start_response))
                time.sleep(self.faults.settings.stall_seconds)
                return reply
            if fault is not None:
                return _json(start_response, "400 Bad Request",
                             {"__type": f"com.amazonaws.dynamodb.v20120810#{fault}",
                              "message": f"injected {fault}"}, "application/x-amz-json-1.0")
        body = b""
        if target.startswith("DynamoDB_"):
            declared = environ.get("CONTENT_LENGTH")
            body = environ["wsgi.input"].read(int(declared)) if declared else environ["wsgi.input"].read()
            environ["wsgi.input"] = io.BytesIO(body)
        with self.lock:
            started = time.perf_counter()
            answer: list[bytes] = []
            try:
                answer = list(self.app(environ, start_response))
                return answer
            finally:
                self.gc.freeze_survivors()
                if target.startswith("DynamoDB_"):
                    took = time.perf_counter() - started
                    operation = target.split(".", 1)[-1]
                    held = self.held.setdefault(operation, [0, 0.0, 0.0])
                    held[0] += 1
                    held[1] += took
                    if took > held[2]:
                        held[2] = took
                        self.slowest[operation] = _described(body, sum(map(len, answer)))


def _described(body: bytes, answered: int) -> str:
    """A DynamoDB request in a few words, for the slowest of its kind: the table and index, the partition a
    Query reads (its first key value) and its Limit, a transaction's or batch's actions, the answer's size."""
    try:
        request = json.loads(body)
    except ValueError:
        return f"{len(body)} B, answered {answered} B"
    parts = [str(request.get("TableName", ""))]
    if request.get("IndexName"):
        parts.append(f"index {request['IndexName']}")
    values = request.get("ExpressionAttributeValues") or {}
    if "KeyConditionExpression" in request and values:
        first = next(iter(values.values()))
        parts.append(f"first value {str(next(iter(first.values())))[:40]}")
    if "Limit" in request:
        parts.append(f"limit {request['Limit']}")
    if "TransactItems" in request:
        kinds = Counter(kind for action in request["TransactItems"] for kind in action)
        parts.append(", ".join(f"{n} {kind}" for kind, n in kinds.items()))
    for table, wanted in (request.get("RequestItems") or {}).items():
        parts.append(f"{table}: {len(wanted if isinstance(wanted, list) else wanted.get('Keys', []))} items")
    return f"{' '.join(p for p in parts if p)}; {len(body)} B asked, {answered} B answered"


# threads applying requests (one at a time, ``Serialized``) or holding an injected stall or lost reply
SERVER_THREADS = 48


def main() -> None:
    parser = argparse.ArgumentParser(description="moto server with isolated requests (jetmail local stack)")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5055)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    # moto lists its package directory to route every request (one isdir per service): once is enough
    listed = tuple(moto_backends.list_of_moto_modules())
    moto_backends.list_of_moto_modules = lambda: listed
    app = DomainDispatcherApplication(create_backend_app)
    gc.freeze()  # moto's modules and backends: nothing a collection could free
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # requests waiting for a thread are the norm
    # waitress keeps a client's connection for its next request; werkzeug's server, moto's own, answers every
    # request with ``Connection: close``, so each DynamoDB call of the stack opened a connection and the
    # emulator started a thread for it
    waitress.serve(Serialized(app), host=args.host, port=args.port, threads=SERVER_THREADS,
                   connection_limit=2000, asyncore_use_poll=True, ident="jetmail-moto")


if __name__ == "__main__":
    main()
