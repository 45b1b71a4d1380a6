"""Settings: a missing value fails clearly; secrets are read from Secrets Manager ARNs (moto server)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from jetmail.aws.clients import aws_client
from jetmail.config import ConfigError, Settings, get_settings
from jetmail.devstack.stack import StackState


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[pytest.MonkeyPatch]:
    import os

    for key in list(os.environ):
        if key.startswith("JETMAIL_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env or local-stack settings file here
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_missing_required_setting_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="JETMAIL_TABLE_NAME"):
        get_settings()


def test_secrets_come_from_secrets_manager_arns(clean_env: pytest.MonkeyPatch, stack: StackState,
                                                settings: Settings, unique: str) -> None:
    client = aws_client("secretsmanager", settings)
    signing = client.create_secret(Name=f"signing-{unique}", SecretString="s" * 40)["ARN"]
    nats = client.create_secret(Name=f"nats-{unique}",
                                SecretString=json.dumps({"user": "api", "password": "pw-123"}))["ARN"]
    clean_env.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", stack.services["moto"].url)
    # as in Lambda, where the function's role credentials are in the environment
    clean_env.setenv("AWS_ACCESS_KEY_ID", "local")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "local")
    clean_env.setenv("JETMAIL_TABLE_NAME", "jetmail-test")
    clean_env.setenv("JETMAIL_SIGNING_SECRET_ARN", signing)
    clean_env.setenv("JETMAIL_NATS_CREDENTIALS_SECRET_ARN", nats)
    loaded = get_settings()
    assert loaded.signing_secret.get_secret_value() == "s" * 40
    assert loaded.nats_user == "api" and loaded.nats_password is not None
    assert "pw-123" not in repr(loaded)
    get_settings.cache_clear()
    clean_env.setenv("JETMAIL_SIGNING_SECRET_ARN", signing.replace(f"signing-{unique}", "missing"))
    with pytest.raises(ConfigError, match="cannot read a secret"):
        get_settings()
