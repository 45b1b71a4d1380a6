"""Templates and API keys in DynamoDB (moto server over HTTP)."""

from __future__ import annotations

import pytest

from jetmail.apikeys import ApiKeys
from jetmail.storage.table import Table
from jetmail.template_store import TemplateNotFound, TemplateStore
from jetmail.templating import TemplateContent, TemplateValidationError


def content(name: str, locale: str = "en", subject: str = "Hi {{ first }}") -> TemplateContent:
    return TemplateContent(name=name, locale=locale, subject=subject, html="<p>Hello {{ first }}</p>")


def test_saving_twice_makes_versions_and_head_moves(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    # GIVEN a template saved twice
    first = store.save(content(f"t{unique}"))
    second = store.save(content(f"t{unique}", subject="Second {{ first }}"))
    # THEN versions count up and the head is the latest, history keeps both
    assert (first.version, second.version) == (1, 2)
    assert store.get(f"t{unique}", locale="en").subject == "Second {{ first }}"
    assert store.get(f"t{unique}", locale="en", version=1).subject == "Hi {{ first }}"
    assert [v.version for v in store.versions(f"t{unique}", locale="en")] == [1, 2]


def test_locale_fallback_chain(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    store.save(content(f"f{unique}", "en", subject="english"))
    store.save(content(f"f{unique}", "de", subject="deutsch"))
    assert store.resolve(f"f{unique}", "de-AT").subject == "deutsch"
    assert store.resolve(f"f{unique}", "fr").subject == "english"
    with pytest.raises(TemplateNotFound):
        store.resolve(f"missing{unique}", "en")


def test_invalid_template_is_not_stored(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    bad = TemplateContent(name=f"b{unique}", locale="en", subject="x", html="<p onclick='x()'>hi</p>")
    with pytest.raises(TemplateValidationError):
        store.save(bad)
    with pytest.raises(TemplateNotFound):
        store.get(f"b{unique}", locale="en")


def test_delete_removes_every_version(table: Table, unique: str) -> None:
    store = TemplateStore(table, default_locale="en", head_ttl_s=0)
    store.save(content(f"d{unique}"))
    store.save(content(f"d{unique}"))
    assert store.delete(f"d{unique}") == 3  # two versions and the head
    with pytest.raises(TemplateNotFound):
        store.resolve(f"d{unique}", "en")


def test_api_key_authenticates_until_revoked(table: Table) -> None:
    keys = ApiKeys(table)
    key, token = keys.create("ci", scopes=["send"])
    found = keys.authenticate(token)
    assert found is not None and found.key_id == key.key_id and found.allows("send") and not found.allows("admin")
    # a key with one character changed is refused
    assert keys.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.revoke(key.key_id)
    assert keys.authenticate(token) is None
    assert not keys.revoke(key.key_id)
