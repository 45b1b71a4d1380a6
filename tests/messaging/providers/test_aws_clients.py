"""aws_client: one client per (service, region, endpoint) per process, safe to create from many threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from jetmail.aws.clients import aws_client
from jetmail.config import Settings


def test_clients_are_shared_per_service_region_and_endpoint(settings_with: Callable[..., Settings]) -> None:
    base = settings_with()
    assert aws_client("dynamodb", base) is aws_client("dynamodb", settings_with())
    assert aws_client("dynamodb", base) is not aws_client("sesv2", base)
    assert aws_client("dynamodb", base) is not aws_client("dynamodb", settings_with(aws_region="eu-west-1"))
    other_endpoint = settings_with(aws_endpoint_url="http://127.0.0.1:9")
    assert aws_client("dynamodb", other_endpoint).meta.endpoint_url == "http://127.0.0.1:9"


def test_concurrent_first_use_makes_one_client(settings_with: Callable[..., Settings]) -> None:
    settings = settings_with(aws_region="ap-southeast-2")
    with ThreadPoolExecutor(max_workers=16) as pool:
        clients = list(pool.map(lambda _: aws_client("sqs", settings), range(64)))
    assert len({id(c) for c in clients}) == 1


def test_clients_talk_to_the_stack(settings: Settings) -> None:
    # the moto server answers through the shared client
    assert "TableNames" in aws_client("dynamodb", settings).list_tables()
    config = aws_client("dynamodb", settings).meta.config
    assert config.retries["mode"] == "standard"
    assert config.read_timeout == 10
