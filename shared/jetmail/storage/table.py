"""A DynamoDB table and its low-level operations: one request per call, counted in ``requests``.

Both tables (the main one and the stats one) go through this class, and nothing else builds a DynamoDB
request: a transaction's operations come from ``put_op`` / ``update_op``, a filtered or projected query
from ``query``, a multi-key read from ``batch_get``. Their keys are made in ``jetmail.storage.keys``,
which also lists every row, its owner and how it is read (docs/reference/storage.md).

Contacts (``jetmail.audience.contacts``): addresses in keys are lower-cased. The contact's gsi1 partition is one
of 16 shards (hash of the address), so paging through all contacts never reads one hot partition. The
contact keeps a ``lists`` map {list id: status}; each membership holds the status and a snapshot of what
sending needs (email, name, language, timezone, attributes, packed as one JSON string ``snap``),
rewritten whenever the contact changes, so a list streams with one Query per ~1 MB page (filter on
``status``) and no per-contact reads. Engagement (``last_opened_at`` / ``last_clicked_at``) lives on the
contact only: one UpdateItem per event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from jetmail.aws.clients import aws_client
from jetmail.config import Settings

_ser = TypeSerializer()
_de = TypeDeserializer()

BATCH_WRITE_MAX = 25
BATCH_GET_MAX = 100
KEY_ATTRIBUTES = ("pk", "sk", "gsi1pk", "gsi1sk")
EXPIRES = "expires_at"  # the TTL attribute of both tables


class ConditionFailed(Exception):
    """A conditional write found the item in another state.

    For a transaction, ``failed`` holds the indexes of the operations whose condition failed."""

    def __init__(self, detail: str = "", *, failed: tuple[int, ...] = ()) -> None:
        super().__init__(detail)
        self.failed = failed


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(_plain(v)) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: native(_de.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def native(value: Any) -> Any:
    """A value read from DynamoDB as plain Python: whole-number Decimals as int, others as float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: native(v) for k, v in value.items()}
    if isinstance(value, list):
        return [native(v) for v in value]
    if isinstance(value, set):
        return {native(v) for v in value}
    return value


def resume_after(key: Mapping[str, str]) -> dict[str, Any]:
    """The ``start`` of a query page that follows the item with these key attributes (a cursor's)."""
    return to_item(key)


def key_values(start: Mapping[str, Any]) -> dict[str, Any]:
    """The key attributes a query's last evaluated key (a ``start``) names, as plain values."""
    return from_item(start)


def item_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """What an item holds: its attributes without the key attributes and the expiry."""
    return {k: v for k, v in item.items() if k not in KEY_ATTRIBUTES and k != EXPIRES}


def _key(pk: str, sk: str) -> dict[str, Any]:
    return to_item({"pk": pk, "sk": sk})


def _with_expressions(request: dict[str, Any], *, condition: str | None = None,
                      names: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
                      ) -> dict[str, Any]:
    """``request`` with its condition and the attribute names and values its expressions use."""
    if condition:
        request["ConditionExpression"] = condition
    if names:
        request["ExpressionAttributeNames"] = dict(names)
    if params:
        request["ExpressionAttributeValues"] = to_item(params)
    return request


def _projection(attributes: Sequence[str], names: dict[str, str]) -> str:
    """A ProjectionExpression of ``attributes``, their placeholders added to ``names``."""
    placeholders = [f"#p{i}" for i in range(len(attributes))]
    names.update(zip(placeholders, attributes, strict=True))
    return ", ".join(placeholders)


def _live(item: Mapping[str, Any], now: float) -> bool:
    # TTL deletion is lazy (and never happens in the emulator): expired means gone
    expires = item.get(EXPIRES)
    return expires is None or expires >= now


def is_condition_failure(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class Table:
    """Thin typed access to the table; every method is one DynamoDB request unless it says otherwise."""

    def __init__(self, settings: Settings, *, name: str | None = None) -> None:
        self.name = name or settings.table_name
        self.client = aws_client("dynamodb", settings)
        # DynamoDB requests made through this object: what the cost benchmarks count
        self.requests = 0

    # ---- schema
    def create(self) -> bool:
        """Create the table if it is missing (local stack and tests; SAM creates it in AWS)."""
        try:
            self.client.create_table(
                TableName=self.name,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in KEY_ATTRIBUTES],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": "gsi1",
                        "KeySchema": [
                            {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                            {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceInUseException":
                return False
            raise
        self.client.get_waiter("table_exists").wait(TableName=self.name, WaiterConfig={"Delay": 1})
        self.client.update_time_to_live(
            TableName=self.name, TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES}
        )
        return True

    # ---- items
    def get(self, pk: str, sk: str, *, consistent: bool = False) -> dict[str, Any] | None:
        self.requests += 1
        resp = self.client.get_item(TableName=self.name, Key=_key(pk, sk), ConsistentRead=consistent)
        item = resp.get("Item")
        if item is None:
            return None
        out = from_item(item)
        return out if _live(out, time.time()) else None

    def put(self, values: Mapping[str, Any], *, condition: str | None = None,
            names: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None) -> None:
        request = self._put(values, condition=condition, names=names, params=params)
        try:
            self.requests += 1
            self.client.put_item(**request)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConditionFailed(str(values.get("pk", ""))) from None
            raise

    def put_op(self, values: Mapping[str, Any], *, condition: str | None = None,
               names: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``put`` as one TransactWriteItems operation, for ``transact`` on this or another table."""
        return {"Put": self._put(values, condition=condition, names=names, params=params)}

    def _put(self, values: Mapping[str, Any], **expressions: Any) -> dict[str, Any]:
        return _with_expressions({"TableName": self.name, "Item": to_item(values)}, **expressions)

    def update(self, pk: str, sk: str, *, expression: str, names: Mapping[str, str] | None = None,
               params: Mapping[str, Any] | None = None, condition: str | None = None) -> dict[str, Any]:
        request = self._update(pk, sk, expression, condition=condition, names=names, params=params)
        request["ReturnValues"] = "ALL_NEW"
        try:
            self.requests += 1
            resp = self.client.update_item(**request)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConditionFailed(pk) from None
            raise
        return from_item(resp.get("Attributes", {}))

    def update_op(self, pk: str, sk: str, *, expression: str, names: Mapping[str, str] | None = None,
                  params: Mapping[str, Any] | None = None, condition: str | None = None) -> dict[str, Any]:
        """The ``update`` as one TransactWriteItems operation, for ``transact`` on this or another table."""
        return {"Update": self._update(pk, sk, expression, condition=condition, names=names, params=params)}

    def _update(self, pk: str, sk: str, expression: str, **expressions: Any) -> dict[str, Any]:
        return _with_expressions({"TableName": self.name, "Key": _key(pk, sk), "UpdateExpression": expression},
                                 **expressions)

    def check_op(self, pk: str, sk: str, *, condition: str, names: Mapping[str, str] | None = None,
                 params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A TransactWriteItems ConditionCheck: the transaction applies only while the item under (pk, sk)
        (present or not) meets ``condition``; it writes nothing itself."""
        return {"ConditionCheck": _with_expressions({"TableName": self.name, "Key": _key(pk, sk)},
                                                    condition=condition, names=names, params=params)}

    def delete(self, pk: str, sk: str, *, condition: str | None = None) -> None:
        request = _with_expressions({"TableName": self.name, "Key": _key(pk, sk)}, condition=condition)
        try:
            self.requests += 1
            self.client.delete_item(**request)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConditionFailed(pk) from None
            raise

    def query(self, *, pk: str, sk_prefix: str | None = None, index: str | None = None, limit: int | None = None,
              forward: bool = True, start: Mapping[str, Any] | None = None, sk_after: str | None = None,
              sk_between: tuple[str, str] | None = None, filter: str | None = None,
              names: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
              projection: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One page of a query; returns (items, last evaluated key for the next page).

        The sort key begins with ``sk_prefix``, or comes after ``sk_after``, or lies between the two
        ends of ``sk_between`` (both included). ``filter`` is a FilterExpression with its own ``names``
        and ``params`` (not ``#h``/``#r``/``#p<n>``/``:h``/``:r``/``:r2``, which the key condition and
        the projection use). DynamoDB filters after reading: a page may hold no item and still have a
        next one, and ``limit`` counts the items read, not the ones kept. ``projection`` names the
        attributes to read (all when empty)."""
        hash_name, range_name = ("gsi1pk", "gsi1sk") if index == "gsi1" else ("pk", "sk")
        expression = "#h = :h"
        key_names = {"#h": hash_name}
        values: dict[str, Any] = {":h": pk}
        if sk_prefix is not None:
            expression += " AND begins_with(#r, :r)"
            values[":r"] = sk_prefix
        elif sk_after is not None:
            expression += " AND #r > :r"
            values[":r"] = sk_after
        elif sk_between is not None:
            expression += " AND #r BETWEEN :r AND :r2"
            values[":r"], values[":r2"] = sk_between
        if ":r" in values:
            key_names["#r"] = range_name
        kwargs: dict[str, Any] = {"TableName": self.name, "ScanIndexForward": forward}
        if filter:
            kwargs["FilterExpression"] = filter
            key_names.update(names or {})
            values.update(params or {})
        if projection:
            kwargs["ProjectionExpression"] = _projection(projection, key_names)
        kwargs.update(KeyConditionExpression=expression, ExpressionAttributeNames=key_names,
                      ExpressionAttributeValues=to_item(values))
        if index:
            kwargs["IndexName"] = index
        if limit:
            kwargs["Limit"] = limit
        if start:
            kwargs["ExclusiveStartKey"] = start
        self.requests += 1
        resp = self.client.query(**kwargs)
        now = time.time()
        items = [from_item(i) for i in resp.get("Items", [])]
        return [i for i in items if _live(i, now)], resp.get("LastEvaluatedKey")

    def query_all(self, *, pk: str, sk_prefix: str | None = None, index: str | None = None,
                  forward: bool = True, sk_after: str | None = None) -> Iterator[dict[str, Any]]:
        start: dict[str, Any] | None = None
        while True:
            items, start = self.query(pk=pk, sk_prefix=sk_prefix, index=index, forward=forward, start=start,
                                      sk_after=sk_after)
            yield from items
            if not start:
                return

    def batch_get(self, keys: Sequence[tuple[str, str]], *, consistent: bool = False,
                  projection: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """BatchGetItem 100 keys per request, retrying unprocessed keys, lazily as the items are consumed;
        items come in no particular order. ``projection`` names the attributes to read (all when empty)."""
        for offset in range(0, len(keys), BATCH_GET_MAX):
            spec: dict[str, Any] = {"Keys": [_key(pk, sk) for pk, sk in keys[offset:offset + BATCH_GET_MAX]],
                                    "ConsistentRead": consistent}
            if projection:
                names: dict[str, str] = {}
                spec["ProjectionExpression"] = _projection(projection, names)
                spec["ExpressionAttributeNames"] = names
            request: dict[str, Any] = {self.name: spec}
            delay = 0.05
            while request:
                self.requests += 1
                resp = self.client.batch_get_item(RequestItems=request)
                for raw in resp.get("Responses", {}).get(self.name, []):
                    yield from_item(raw)
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(delay)  # back off on throttling as the SDK guide asks
                    delay = min(delay * 2, 2.0)

    def batch_put(self, items: Sequence[Mapping[str, Any]], *, per_request: int = BATCH_WRITE_MAX) -> int:
        """Write items 25 (or ``per_request``, fewer) per request, retrying unprocessed ones; returns the number
        of requests made."""
        requests = 0
        per_request = min(per_request, BATCH_WRITE_MAX)
        for offset in range(0, len(items), per_request):
            pending = [{"PutRequest": {"Item": to_item(i)}} for i in items[offset : offset + per_request]]
            delay = 0.05
            while pending:
                resp = self.client.batch_write_item(RequestItems={self.name: pending})
                requests += 1
                self.requests += 1
                pending = resp.get("UnprocessedItems", {}).get(self.name, [])
                if pending:
                    time.sleep(delay)  # back off on throttling as the SDK guide asks
                    delay = min(delay * 2, 2.0)
        return requests

    def batch_put_groups(self, groups: Iterable[Sequence[Mapping[str, Any]]]) -> int:
        """Write groups of items (the rows of one thing) in as few BatchWriteItem requests as keep each
        group in one request (a group larger than a request fills whole ones); returns the requests made."""
        return sum(self.batch_put(request) for request in _pack(groups))

    def batch_delete(self, keys: Sequence[tuple[str, str]]) -> None:
        for offset in range(0, len(keys), BATCH_WRITE_MAX):
            pending = [{"DeleteRequest": {"Key": _key(pk, sk)}} for pk, sk in keys[offset : offset + BATCH_WRITE_MAX]]
            while pending:
                resp = self.client.batch_write_item(RequestItems={self.name: pending})
                self.requests += 1
                pending = resp.get("UnprocessedItems", {}).get(self.name, [])

    def transact(self, operations: Sequence[dict[str, Any]]) -> None:
        """TransactWriteItems of ``put_op`` / ``update_op`` operations (of any table); raises ConditionFailed
        when a condition fails."""
        try:
            self.requests += 1
            self.client.transact_write_items(TransactItems=list(operations))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "TransactionCanceledException":
                reasons = exc.response.get("CancellationReasons") or _reasons_from_message(str(exc))
                failed = tuple(i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed")
                if not failed and any(r.get("Code") not in (None, "None") for r in reasons):
                    raise  # cancelled for another reason (conflict, throttling): not a condition
                raise ConditionFailed(str(reasons), failed=failed) from None
            raise


def _reasons_from_message(message: str) -> list[dict[str, str]]:
    # botocore puts the reasons in the message when the response lacks the structured list:
    # "... [None, ConditionalCheckFailed, None]"
    start, end = message.rfind("["), message.rfind("]")
    if start < 0 or end < start:
        return []
    return [{"Code": part.strip()} for part in message[start + 1:end].split(",")]


def _pack(groups: Iterable[Sequence[Mapping[str, Any]]],
          size: int = BATCH_WRITE_MAX) -> Iterator[list[Mapping[str, Any]]]:
    """Requests of at most ``size`` items that never split a group (a group only spans requests when
    it alone is larger than one)."""
    current: list[Mapping[str, Any]] = []
    for group in groups:
        if len(current) + len(group) > size and current:
            yield current
            current = []
        for offset in range(0, len(group), size):
            part = group[offset:offset + size]
            if len(current) + len(part) > size:
                yield current
                current = []
            current.extend(part)
    if current:
        yield current
