"""A DynamoDB table and its low-level operations: one request per call, counted in ``requests``.

Both tables (the main one and the stats one) go through this class. Their keys are made in
``jetmail.storage.keys``, which also lists every row and how it is read (docs/reference/storage.md).

Contacts (``jetmail.contacts``): addresses in keys are lower-cased. The contact's gsi1 partition is one
of 16 shards (hash of the address), so paging through all contacts never reads one hot partition. The
contact keeps a ``lists`` map {list id: status}; each membership holds the status and a snapshot of what
sending needs (email, name, language, timezone, attributes, packed as one JSON string ``snap``),
rewritten whenever the contact changes, so a list streams with one Query per ~1 MB page (filter on
``status``) and no per-contact reads. Engagement (``last_opened_at`` / ``last_clicked_at``) lives on the
contact only: one UpdateItem per event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from jetmail.aws import aws_client
from jetmail.config import Settings

_ser = TypeSerializer()
_de = TypeDeserializer()

BATCH_WRITE_MAX = 25
BATCH_GET_MAX = 100


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


def is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


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
                AttributeDefinitions=[
                    {"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "gsi1pk", "gsi1sk")
                ],
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
            TableName=self.name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
        return True

    # ---- items
    def get(self, pk: str, sk: str, *, consistent: bool = False) -> dict[str, Any] | None:
        self.requests += 1
        resp = self.client.get_item(TableName=self.name, Key=to_item({"pk": pk, "sk": sk}), ConsistentRead=consistent)
        item = resp.get("Item")
        if item is None:
            return None
        out = from_item(item)
        expires = out.get("expires_at")
        # TTL deletion is lazy (and never happens in the emulator): expired means gone
        if expires is not None and expires < time.time():
            return None
        return out

    def put(self, values: Mapping[str, Any], *, condition: str | None = None,
            names: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": to_item(values)}
        if condition:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = dict(names)
        if params:
            kwargs["ExpressionAttributeValues"] = to_item(params)
        try:
            self.requests += 1
            self.client.put_item(**kwargs)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConditionFailed(str(values.get("pk", ""))) from None
            raise

    def update(self, pk: str, sk: str, *, expression: str, names: Mapping[str, str] | None = None,
               params: Mapping[str, Any] | None = None, condition: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": to_item({"pk": pk, "sk": sk}),
            "UpdateExpression": expression,
            "ReturnValues": "ALL_NEW",
        }
        if names:
            kwargs["ExpressionAttributeNames"] = dict(names)
        if params:
            kwargs["ExpressionAttributeValues"] = to_item(params)
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            self.requests += 1
            resp = self.client.update_item(**kwargs)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConditionFailed(pk) from None
            raise
        return from_item(resp.get("Attributes", {}))

    def update_op(self, pk: str, sk: str, *, expression: str, names: Mapping[str, str] | None = None,
                  params: Mapping[str, Any] | None = None, condition: str | None = None) -> dict[str, Any]:
        """The ``update`` as one TransactWriteItems operation, for ``transact`` on this or another table."""
        op: dict[str, Any] = {"TableName": self.name, "Key": to_item({"pk": pk, "sk": sk}),
                              "UpdateExpression": expression}
        if names:
            op["ExpressionAttributeNames"] = dict(names)
        if params:
            op["ExpressionAttributeValues"] = to_item(params)
        if condition:
            op["ConditionExpression"] = condition
        return {"Update": op}

    def delete(self, pk: str, sk: str, *, condition: str | None = None) -> None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": to_item({"pk": pk, "sk": sk})}
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            self.requests += 1
            self.client.delete_item(**kwargs)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise ConditionFailed(pk) from None
            raise

    def query(self, *, pk: str, sk_prefix: str | None = None, index: str | None = None, limit: int | None = None,
              forward: bool = True, start: Mapping[str, Any] | None = None, sk_after: str | None = None,
              filter: str | None = None, names: Mapping[str, str] | None = None,
              params: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict | None]:
        """One page of a query; returns (items, last evaluated key for the next page).

        ``filter`` is a FilterExpression with its own ``names`` and ``params`` (not ``#h``/``#r``/``:h``/``:r``,
        which the key condition uses). DynamoDB filters after reading: a page may hold no item and still
        have a next one, and ``limit`` counts the items read, not the ones kept."""
        hash_name, range_name = ("gsi1pk", "gsi1sk") if index == "gsi1" else ("pk", "sk")
        expression = "#h = :h"
        key_names = {"#h": hash_name}
        values: dict[str, Any] = {":h": pk}
        if sk_prefix is not None:
            expression += " AND begins_with(#r, :r)"
            key_names["#r"] = range_name
            values[":r"] = sk_prefix
        elif sk_after is not None:
            expression += " AND #r > :r"
            key_names["#r"] = range_name
            values[":r"] = sk_after
        kwargs: dict[str, Any] = {"TableName": self.name, "ScanIndexForward": forward}
        if filter:
            kwargs["FilterExpression"] = filter
            key_names.update(names or {})
            values.update(params or {})
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
        items = [i for i in items if i.get("expires_at") is None or i["expires_at"] >= now]
        return items, resp.get("LastEvaluatedKey")

    def query_all(self, *, pk: str, sk_prefix: str | None = None, index: str | None = None,
                  forward: bool = True, sk_after: str | None = None) -> Iterator[dict[str, Any]]:
        start: dict | None = None
        while True:
            items, start = self.query(pk=pk, sk_prefix=sk_prefix, index=index, forward=forward, start=start,
                                      sk_after=sk_after)
            yield from items
            if not start:
                return

    def batch_put(self, items: Sequence[Mapping[str, Any]]) -> int:
        """Write items 25 per request, retrying unprocessed ones; returns the number of requests made."""
        requests = 0
        for offset in range(0, len(items), BATCH_WRITE_MAX):
            pending = [{"PutRequest": {"Item": to_item(i)}} for i in items[offset : offset + BATCH_WRITE_MAX]]
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

    def batch_delete(self, keys: Sequence[tuple[str, str]]) -> None:
        for offset in range(0, len(keys), BATCH_WRITE_MAX):
            pending = [{"DeleteRequest": {"Key": to_item({"pk": pk, "sk": sk})}}
                       for pk, sk in keys[offset : offset + BATCH_WRITE_MAX]]
            while pending:
                resp = self.client.batch_write_item(RequestItems={self.name: pending})
                self.requests += 1
                pending = resp.get("UnprocessedItems", {}).get(self.name, [])

    def transact(self, operations: Sequence[dict[str, Any]]) -> None:
        """TransactWriteItems with typed items; raises ConditionFailed when a condition fails."""
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


def batch_get(table: Table, keys: Sequence[tuple[str, str]], *, consistent: bool = False,
              projection: str | None = None, names: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """BatchGetItem 100 keys per request, retrying unprocessed keys; items come in no particular order."""
    for offset in range(0, len(keys), BATCH_GET_MAX):
        part = keys[offset:offset + BATCH_GET_MAX]
        spec: dict[str, Any] = {"Keys": [to_item({"pk": pk, "sk": sk}) for pk, sk in part],
                                "ConsistentRead": consistent}
        if projection:
            spec["ProjectionExpression"] = projection
        if names:
            spec["ExpressionAttributeNames"] = dict(names)
        request: dict[str, Any] = {table.name: spec}
        delay = 0.05
        while request:
            table.requests += 1
            resp = table.client.batch_get_item(RequestItems=request)
            for raw in resp.get("Responses", {}).get(table.name, []):
                yield from_item(raw)
            request = resp.get("UnprocessedKeys") or {}
            if request:
                time.sleep(delay)  # back off on throttling as the SDK guide asks
                delay = min(delay * 2, 2.0)
