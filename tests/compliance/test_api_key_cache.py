"""The API's short-lived cache of API-key verdicts, against the real stack: one DynamoDB read per token
every few seconds, and revocation or rotation made in another process still taking effect within
``api_key_cache_s``."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.config import Settings
from jetmail.devstack.stack import wait_until
from jetmail.services import Services

CACHE_S = 1.5


@pytest.fixture(scope="module")
def api_services(settings: Settings, services: Services) -> Services:
    """An API process of its own (its own key cache), beside ``services`` acting as another process."""
    own = Settings(_env_file=None, **{**settings.model_dump(), "api_key_cache_s": CACHE_S})  # type: ignore[call-arg]
    return Services(own)


@pytest.fixture(scope="module")
def app(api_services: Services) -> FastAPI:
    return create_app(api_services.settings, services=api_services)


def _get(app: FastAPI, token: str) -> int:
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        return client.get("/v1/messages/none").status_code


def test_a_token_is_read_from_dynamodb_once_per_cache_period(api_services: Services, services: Services,
                                                             unique: str) -> None:
    # GIVEN a key
    _, token = services.api_keys.create(f"cache-{unique}", scopes=["send"])
    keys = api_services.api_keys
    before = keys.table.requests
    # WHEN the API checks it 20 times in a row
    verdicts = [keys.authenticate(token, cached=True) for _ in range(20)]
    # THEN every check passes and only the first read DynamoDB
    assert all(v is not None for v in verdicts)
    assert keys.table.requests - before == 1
    # AND an uncached check (the CLI's, the dashboard login's) reads it again
    assert keys.authenticate(token) is not None
    assert keys.table.requests - before == 2


def test_revocation_elsewhere_stops_the_key_within_the_cache_period(app: FastAPI, services: Services,
                                                                    unique: str) -> None:
    # GIVEN a key the API has just accepted (and so cached)
    key, token = services.api_keys.create(f"revoke-cached-{unique}", scopes=["send"])
    assert _get(app, token) == 404
    # WHEN another process revokes it
    assert services.api_keys.revoke(key.key_id)
    revoked_at = time.monotonic()
    # THEN the API refuses it within the cache period (plus a request's time)
    wait_until(lambda: _get(app, token) == 401, timeout=CACHE_S + 5, what="revocation to apply")
    assert time.monotonic() - revoked_at <= CACHE_S + 1.0


def test_rotation_elsewhere_takes_the_old_secret_away_within_the_cache_period(app: FastAPI, services: Services,
                                                                             unique: str) -> None:
    # GIVEN a key the API has just accepted
    key, old = services.api_keys.create(f"rotate-cached-{unique}", scopes=["send"])
    assert _get(app, old) == 404
    # WHEN another process rotates it without grace
    _, new = services.api_keys.rotate(key.key_id)
    rotated_at = time.monotonic()
    # THEN the new secret works at once and the old one stops within the cache period
    assert _get(app, new) == 404
    wait_until(lambda: _get(app, old) == 401, timeout=CACHE_S + 5, what="rotation to apply")
    assert time.monotonic() - rotated_at <= CACHE_S + 1.0


def test_revocation_through_the_same_process_applies_at_once(api_services: Services, app: FastAPI,
                                                              unique: str) -> None:
    # GIVEN a key the API has cached WHEN the same process revokes it THEN the next request is refused
    key, token = api_services.api_keys.create(f"revoke-here-{unique}", scopes=["send"])
    assert _get(app, token) == 404
    assert api_services.api_keys.revoke(key.key_id)
    assert _get(app, token) == 401
