"""The local DynamoDB emulator keeps a client's connection for its next request (served by waitress, not moto's
development server, which closed every connection after one answer)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from jetmail.devstack.stack import StackState

LIST_TABLES = {"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0",
               "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, "
                                "SignedHeaders=host, Signature=0"}


def test_two_requests_share_one_connection(stack: StackState) -> None:
    address = urlsplit(stack.services["moto"].url)
    assert address.hostname is not None and address.port is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        # WHEN two DynamoDB requests are made one after the other on one connection
        answers = []
        for _ in range(2):
            connection.request("POST", "/", body=b"{}", headers=LIST_TABLES)
            response = connection.getresponse()
            answers.append((response.status, response.getheader("Connection"), json.loads(response.read())))
            # THEN the first answer leaves the connection open, and the second is answered on it
            assert connection.sock is not None, "the emulator closed the connection after its answer"
        assert [(status, keep) for status, keep, _ in answers] == [(200, None), (200, None)], answers
        assert all("TableNames" in body for _, _, body in answers)
    finally:
        connection.close()
