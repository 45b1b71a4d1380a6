"""The local stack's own services answer on the ports it reports."""

from __future__ import annotations

import smtplib
import urllib.request

import pytest

from jetmail.config import Settings
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from jetmail.storage.table import ConditionFailed, Table, to_item
from stacktools import emulator


def test_smtp_sink_stores_messages_and_indexes_recipients(stack: StackState, mailbox: Mailbox, unique: str) -> None:
    # GIVEN the sink from the local stack
    port = stack.services["smtp"].port
    rcpt = f"sink-{unique}@example.com"
    # WHEN a message is sent over a real SMTP socket
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.sendmail("from@example.com", [rcpt], b"Subject: hi\r\n\r\nbody\r\n")
    # THEN it is listed for that recipient and readable as a message
    wait_until(lambda: len(mailbox.for_recipient(rcpt)) == 1, timeout=5, what="sink index")
    entry = mailbox.for_recipient(rcpt)[0]
    assert mailbox.message(entry.id)["Subject"] == "hi"


def test_sink_hooks_reject_and_defer(stack: StackState, unique: str) -> None:
    port = stack.services["smtp"].port
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        refused = smtp.sendmail("f@example.com", [f"reject-{unique}@example.com", f"ok-{unique}@example.com"],
                                b"Subject: x\r\n\r\nx\r\n")
        assert refused[f"reject-{unique}@example.com"][0] == 550
    deferred = f"defer1-{unique}@example.com"
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        try:
            smtp.sendmail("f@example.com", [deferred], b"Subject: x\r\n\r\nx\r\n")
            raise AssertionError("first attempt should be deferred")
        except smtplib.SMTPRecipientsRefused as exc:
            assert exc.recipients[deferred][0] == 451
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        assert smtp.sendmail("f@example.com", [deferred], b"Subject: x\r\n\r\nx\r\n") == {}


def test_moto_and_nats_answer(stack: StackState) -> None:
    with urllib.request.urlopen(stack.services["moto"].url + "/moto-api/") as resp:  # noqa: S310
        assert resp.status == 200
    assert stack.services["nats"].url.startswith("nats://127.0.0.1:")


def test_local_ses_answers_get_account_with_the_quota_it_is_given(stack: StackState, settings: Settings) -> None:
    # GIVEN the local moto server, told the account may send 200/s and 100,000 a day
    from jetmail.aws.clients import aws_client
    from jetmail.deliverability.ratelimit import limits_from_ses

    try:
        emulator(stack.services["moto"].url, "ses-quota", {"max_send_rate": 200, "max_24_hour_send": 100000})
        # WHEN a worker reads its limits from SES, as it does at start on the SES provider
        limits = limits_from_ses(aws_client("sesv2", settings))
        # THEN they are the account's quota
        assert limits.per_second == 200 and limits.per_day == 100000
    finally:
        emulator(stack.services["moto"].url, "ses-quota", {})


def test_a_cancelled_transaction_leaves_every_item_as_it_was(table: Table, unique: str) -> None:
    pk = f"TXTEST#{unique}"
    table.put({"pk": pk, "sk": "kept", "n": 1})
    table.put({"pk": pk, "sk": "deleted", "n": 2})
    key = {"pk": {"S": pk}, "sk": {"S": "kept"}}
    with pytest.raises(ConditionFailed):
        table.transact([
            {"Put": {"TableName": table.name, "Item": to_item({"pk": pk, "sk": "added", "n": 3})}},
            table.update_op(pk, "kept", expression="SET n = n + :one", params={":one": 1}),
            {"Delete": {"TableName": table.name, "Key": to_item({"pk": pk, "sk": "deleted"})}},
            {"ConditionCheck": {"TableName": table.name, "Key": key | {"sk": {"S": "missing"}},
                                "ConditionExpression": "attribute_exists(pk)"}},
        ])
    assert {item["sk"]: item["n"] for item in table.query_all(pk=pk)} == {"kept": 1, "deleted": 2}

    table.transact([
        {"Put": {"TableName": table.name, "Item": to_item({"pk": pk, "sk": "added", "n": 3})}},
        table.update_op(pk, "kept", expression="SET n = n + :one", params={":one": 1}),
        {"Delete": {"TableName": table.name, "Key": to_item({"pk": pk, "sk": "deleted"})}},
    ])
    assert {item["sk"]: item["n"] for item in table.query_all(pk=pk)} == {"kept": 2, "added": 3}


def test_a_query_pages_through_its_partition_alone_in_key_order(table: Table, unique: str) -> None:
    # GIVEN a partition whose keys sort apart from their write order, and its neighbours
    pk = f"QTEST#{unique}"
    for name in ("c", "a", "e", "b", "d", "x1"):
        table.put({"pk": pk, "sk": name, "n": 1})
    table.put({"pk": pk + "-next", "sk": "a", "n": 2})
    table.put({"pk": pk[:-1], "sk": "a", "n": 3})
    # WHEN it is read one item per page, forwards, backwards and by prefix
    pages: list[list[str]] = []
    start = None
    while True:
        items, start = table.query(pk=pk, limit=1, start=start)
        pages.append([item["sk"] for item in items])
        if not start:
            break
    # THEN every item of that partition comes once, in key order, and nothing of another
    assert [sk for page in pages for sk in page] == ["a", "b", "c", "d", "e", "x1"]
    assert [item["sk"] for item in table.query_all(pk=pk, forward=False)] == ["x1", "e", "d", "c", "b", "a"]
    assert [item["sk"] for item in table.query_all(pk=pk, sk_prefix="x")] == ["x1"]
    assert [item["sk"] for item in table.query_all(pk=pk, sk_after="c")] == ["d", "e", "x1"]
    assert list(table.query_all(pk=f"QTEST#none-{unique}")) == []


def test_item_reads_return_every_attribute_type_as_written(table: Table, unique: str) -> None:
    # GIVEN an item with every DynamoDB attribute type, binary ones included
    pk = f"TYPES#{unique}"
    item = {"pk": {"S": pk}, "sk": {"S": "all"}, "s": {"S": "ünïcode ✓"}, "n": {"N": "12.5"},
            "b": {"B": b"\x00\xffbin"}, "t": {"BOOL": True}, "z": {"NULL": True}, "ss": {"SS": ["a", "b"]},
            "ns": {"NS": ["1", "2"]},
            "bs": {"BS": [b"\x01", b"\x02"]}, "l": {"L": [{"S": "x"}, {"N": "3"}]},
            "m": {"M": {"k": {"S": "v"}, "inner": {"M": {"deep": {"BOOL": False}}}}}}
    plain = {k: v for k, v in item.items() if k not in ("b", "bs")} | {"sk": {"S": "plain"}}
    table.client.put_item(TableName=table.name, Item=item)
    table.client.put_item(TableName=table.name, Item=plain)
    key = {"pk": item["pk"], "sk": item["sk"]}
    try:
        # WHEN they are read back by each item read
        got = table.client.get_item(TableName=table.name, Key=key)["Item"]
        listed = table.client.query(TableName=table.name, KeyConditionExpression="pk = :p",
                                    ExpressionAttributeValues={":p": item["pk"]})
        batch = table.client.batch_get_item(
            RequestItems={table.name: {"Keys": [key, {**key, "sk": {"S": "plain"}}]}})
    finally:
        # binary values are not JSON: other tests' scans of the shared table read plain items only
        for sk in ("all", "plain"):
            table.delete(pk, sk)
    # THEN each returns the items exactly as written
    assert got == item
    assert listed["Items"] == [item, plain] and listed["Count"] == 2
    assert sorted(batch["Responses"][table.name], key=lambda i: i["sk"]["S"]) == [item, plain]
    assert table.client.get_item(TableName=table.name, Key={**key, "sk": {"S": "absent"}}).get("Item") is None


def test_pages_with_a_prefix_limit_and_filter_cover_the_partition_as_it_changes(table: Table, unique: str) -> None:
    # GIVEN a partition with keys around the prefix, every third one filtered out
    pk = f"QPAGE#{unique}"
    table.batch_put([{"pk": pk, "sk": f"M#{n:03d}", "keep": n % 3 != 0} for n in range(40)]
                    + [{"pk": pk, "sk": sk, "keep": True} for sk in ("A", "M", "M$", "N#000", "Z")])

    def pages(limit: int, prefix: str = "M#") -> list[str]:
        found: list[str] = []
        start = None
        while True:
            items, start = table.query(pk=pk, sk_prefix=prefix, limit=limit, start=start, filter="#k = :k",
                                       names={"#k": "keep"}, params={":k": True})
            found += [item["sk"] for item in items]
            if not start:
                return found

    kept = [f"M#{n:03d}" for n in range(40) if n % 3 != 0]
    # WHEN it is read in pages of several sizes THEN every kept member comes once, in order
    for limit in (1, 2, 7, 13, 40, 100):
        assert pages(limit) == kept
    # AND a key added or removed between pages is seen as DynamoDB would see it
    items, start = table.query(pk=pk, sk_prefix="M#", limit=5)
    table.put({"pk": pk, "sk": "M#002a", "keep": True})  # before the page's end: already passed
    table.put({"pk": pk, "sk": "M#050", "keep": True})  # after it: still to come
    table.delete(pk, "M#010")
    rest: list[str] = []
    while start:
        page, start = table.query(pk=pk, sk_prefix="M#", limit=5, start=start)
        rest += [item["sk"] for item in page]
    assert [item["sk"] for item in items] == [f"M#{n:03d}" for n in range(5)]
    assert rest == [f"M#{n:03d}" for n in range(5, 40) if n != 10] + ["M#050"]
