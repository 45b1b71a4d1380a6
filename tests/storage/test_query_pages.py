"""A DynamoDB Query page is read with ``json.loads`` instead of botocore's shape walk: the answer must be the one
botocore gives, every attribute type included, and errors must stay errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from jetmail.aws.clients import aws_client
from jetmail.config import Settings
from jetmail.storage.table import Table, from_item

EVERY_TYPE: dict[str, Any] = {
    "text": {"S": "Grüße, \"quoted\" \\ line\nbreak"},
    "whole": {"N": "42"},
    "fraction": {"N": "-3.25e2"},
    "raw": {"B": b"\x00\xffbinary\r\n"},
    "texts": {"SS": ["a", "b"]},
    "numbers": {"NS": ["1", "2.5"]},
    "raws": {"BS": [b"\x01", b"\x02\x03"]},
    "nested": {"M": {"deep": {"M": {"raw": {"B": b"\x10"}, "list": {"L": [{"B": b"\x11"}, {"S": "x"},
                                                                          {"NULL": True}, {"BOOL": False}]}}}}},
    "items": {"L": [{"N": "1"}, {"M": {"raw": {"B": b"\x12"}}}, {"BS": [b"\x13"]}]},
    "nothing": {"NULL": True},
    "yes": {"BOOL": True},
}


def plain_client(settings: Settings) -> Any:
    """A boto3 client without jetmail's hook: botocore parses as it always does."""
    assert settings.aws_secret_access_key is not None
    return boto3.client("dynamodb", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url,
                        aws_access_key_id=settings.aws_access_key_id,
                        aws_secret_access_key=settings.aws_secret_access_key.get_secret_value())


def test_a_query_page_reads_as_botocore_reads_it(table: Table, settings: Settings, unique: str) -> None:
    client = aws_client("dynamodb", settings)
    pk = f"PAGES#{unique}"
    for sk in ("a", "b", "c"):
        client.put_item(TableName=table.name, Item={"pk": {"S": pk}, "sk": {"S": sk}, **EVERY_TYPE})
    request = {"TableName": table.name, "KeyConditionExpression": "pk = :p",
               "ExpressionAttributeValues": {":p": {"S": pk}}, "Limit": 2, "ReturnConsumedCapacity": "TOTAL"}
    ours, theirs = client.query(**request), plain_client(settings).query(**request)
    for answer in (ours, theirs):
        answer.pop("ResponseMetadata")
    assert ours == theirs
    assert ours["Items"][0]["raw"] == {"B": b"\x00\xffbinary\r\n"}
    assert ours["Items"][1]["nested"]["M"]["deep"]["M"]["list"]["L"][0] == {"B": b"\x11"}
    assert ours["LastEvaluatedKey"] == {"pk": {"S": pk}, "sk": {"S": "b"}}
    # the next page through the key it gave, and the items as the application reads them
    rest = client.query(**request, ExclusiveStartKey=ours["LastEvaluatedKey"])
    assert [item["sk"] for item in rest["Items"]] == [{"S": "c"}]
    assert "LastEvaluatedKey" not in rest
    read = from_item(rest["Items"][0])
    assert read["raws"] == {b"\x01", b"\x02\x03"} and read["numbers"] == {1, 2.5} and read["fraction"] == -325
    assert read["items"][1] == {"raw": b"\x12"} and read["whole"] == 42 and read["nothing"] is None
    assert Decimal(theirs["Items"][0]["fraction"]["N"]) == Decimal("-325")


def test_a_failed_query_is_still_an_error(settings: Settings, unique: str) -> None:
    client = aws_client("dynamodb", settings)
    with pytest.raises(ClientError) as caught:
        client.query(TableName=f"missing-{unique}", KeyConditionExpression="pk = :p",
                     ExpressionAttributeValues={":p": {"S": "x"}})
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
