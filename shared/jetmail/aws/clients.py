"""boto3 clients, made once per process and shared.

A boto3 ``Session`` is not safe to use from several threads at once, but the clients it makes are;
so one session builds every client under a lock, and the clients are cached by (service, region,
endpoint) for the life of the process (module scope in Lambda, worker start-up in ECS).
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import boto3
from botocore.config import Config

from jetmail.config import Settings

_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 3,
    "tcp_keepalive": True,
    # Sized for the SES provider's thread pool plus DynamoDB calls from the same process; below
    # this, botocore logs "Connection pool is full" and drops connections under load.
    "max_pool_connections": 50,
}

# A send is not idempotent: an SDK retry after a lost response sends the mail twice, and a retried
# throttle hides the signal the worker uses to slow down. The job layer retries with backoff
# instead, where the attempt is recorded.
_ATTEMPTS = {"sesv2": 1}


# DynamoDB requests are built by one adapter (jetmail.storage.table) from validated models, and DynamoDB checks
# them again itself: botocore's client-side parameter validation was ~70 % of building one (1.7 of 2.5 ms for
# a BatchWriteItem of 25 rows), paid on every request of the API, the workers and the functions
_UNVALIDATED = frozenset({"dynamodb"})


def _config(service: str, settings: Settings) -> Config:
    # Lambda functions run for seconds; botocore's default 60 s read timeout would outlive them
    # (JETMAIL_AWS_READ_TIMEOUT_S, 10 s by default)
    return Config(retries={"mode": "standard", "max_attempts": _ATTEMPTS.get(service, 3)},
                  read_timeout=settings.aws_read_timeout_s, parameter_validation=service not in _UNVALIDATED,
                  **_TIMEOUTS)

# A Query page of 300 list members took botocore 9.9 ms to parse, walking the output shape for every attribute of
# every item, against 1.2 ms for json.loads: ~30 µs of a campaign worker's CPU per recipient it plans. DynamoDB's
# JSON already is the AttributeValue form botocore returns, but for binary values, which it sends as base64.
_READ_DIRECTLY = ("Query",)


def _read_page(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """botocore's ``before-parse`` hook for a DynamoDB read: a successful answer is read with ``json.loads`` and
    its binary values decoded, and botocore is left an empty body to parse (its response metadata, headers and
    errors are as before)."""
    if response_dict.get("status_code") != 200 or not response_dict.get("body"):
        return
    try:
        page = json.loads(response_dict["body"])
    except ValueError:
        return  # botocore reports what it makes of it
    if not isinstance(page, dict):
        return
    for item in page.get("Items", ()):
        _decode_binary(item)  # LastEvaluatedKey holds key attributes, strings in every jetmail table
    customized_response_dict.update(page)
    response_dict["body"] = b"{}"


def _decode_binary(item: dict[str, Any]) -> None:
    for value in item.values():
        _decode_value(value)


def _decode_value(value: dict[str, Any]) -> None:
    if "M" in value:
        _decode_binary(value["M"])
    elif "L" in value:
        for element in value["L"]:
            _decode_value(element)
    elif "B" in value:
        value["B"] = base64.b64decode(value["B"])
    elif "BS" in value:
        value["BS"] = [base64.b64decode(element) for element in value["BS"]]


_lock = threading.Lock()
_session: boto3.session.Session | None = None
_clients: dict[tuple[str, str, str | None, float, str | None], Any] = {}


def aws_client(service: str, settings: Settings) -> Any:
    """The process-wide low-level client for ``service``, at ``settings.aws_endpoint_url`` when set."""
    key = (service, settings.aws_region, settings.aws_endpoint_url, settings.aws_read_timeout_s,
           settings.aws_access_key_id)
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _get_session().client(
                service,
                region_name=settings.aws_region,
                endpoint_url=settings.aws_endpoint_url,
                config=_config(service, settings),
                **_credentials(settings),
            )
            if service == "dynamodb":
                for operation in _READ_DIRECTLY:
                    client.meta.events.register(f"before-parse.dynamodb.{operation}", _read_page)
            _clients[key] = client
    return client


def _credentials(settings: Settings) -> dict[str, str]:
    """Static credentials when the settings carry them (the local stack); otherwise the default chain."""
    if not settings.aws_access_key_id or settings.aws_secret_access_key is None:
        return {}
    return {"aws_access_key_id": settings.aws_access_key_id,
            "aws_secret_access_key": settings.aws_secret_access_key.get_secret_value()}


def reset_aws_clients() -> None:
    """Forget every client and the session (after a fork, whose copied connections must not be shared)."""
    global _session
    with _lock:
        _clients.clear()
        _session = None


def _get_session() -> boto3.session.Session:
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session
