"""Contacts, lists, memberships and imports against the moto server: HTTP API, domain and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.audience.contacts import ContactStore
from jetmail.audience.model import ContactUpsert, InvalidImport, ListNotFound
from jetmail.config import Settings
from jetmail.services import Services
from jetmail.storage.table import Table
from stacktools import api_client


@pytest.fixture(scope="module")
def client(services: Services, api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token)


def new_list(client: TestClient, name: str) -> str:
    resp = client.post("/v1/lists", json={"name": name})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def all_members(client: TestClient, list_id: str, *, limit: int = 100, **params: str) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/lists/{list_id}/members", params=query)
        assert page.status_code == 200, page.text
        members += page.json()["data"]
        cursor = page.json().get("next_cursor")
        if not cursor:
            return members


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


def test_upsert_normalises_the_address_and_keeps_list_snapshots_in_step(client: TestClient, unique: str) -> None:
    news, promo = new_list(client, f"news-{unique}"), new_list(client, f"promo-{unique}")
    address = f"Ada.Lovelace-{unique}@EXAMPLE.com"
    # WHEN a contact is created in two lists with a mixed-case domain
    first = client.put(f"/v1/contacts/{address}", json={
        "name": "Ada", "language": "en-GB", "timezone": "Europe/London",
        "attributes": {"plan": "free", "seats": 1}, "lists": {news: "subscribed", promo: "pending"}})
    assert first.status_code == 201, first.text
    # THEN the domain is lower-cased, and the contact is found whatever the case
    assert first.json()["email"] == f"Ada.Lovelace-{unique}@example.com"
    found = client.get(f"/v1/contacts/ada.lovelace-{unique}@example.com")
    assert found.status_code == 200
    assert found.json()["lists"] == {news: "subscribed", promo: "pending"}
    # WHEN the profile changes (attributes merge, null removes a key; omitted fields are kept)
    second = client.put(f"/v1/contacts/{address.lower()}", json={
        "name": "Ada Lovelace", "attributes": {"plan": "pro", "seats": None}})
    assert second.status_code == 200, second.text
    assert second.json()["attributes"] == {"plan": "pro"}
    assert second.json()["timezone"] == "Europe/London"
    # THEN both lists' snapshots show the new profile, each with its own status
    for list_id, status in ((news, "subscribed"), (promo, "pending")):
        [member] = all_members(client, list_id)
        assert (member["name"], member["attributes"], member["status"]) == ("Ada Lovelace", {"plan": "pro"}, status)
        assert member["timezone"] == "Europe/London"
    # and a status change touches only that list
    client.put(f"/v1/contacts/{address}", json={"lists": {promo: "subscribed"}})
    assert [m["email"] for m in all_members(client, promo, status="subscribed")] == [first.json()["email"]]
    assert all_members(client, news, status="pending") == []


def test_contact_input_is_checked(client: TestClient, unique: str) -> None:
    list_id = new_list(client, f"checks-{unique}")
    address = f"check-{unique}@example.com"
    bad_zone = client.put(f"/v1/contacts/{address}", json={"timezone": "Mars/Olympus_Mons"})
    assert bad_zone.status_code == 422
    assert "unknown time zone" in json.dumps(bad_zone.json())
    unknown_list = client.put(f"/v1/contacts/{address}", json={"lists": {"lst_0000000000000000": "subscribed"}})
    assert unknown_list.status_code == 422
    assert "lst_0000000000000000" in unknown_list.json()["detail"]
    assert client.put(f"/v1/contacts/{address}", json={"lists": {list_id: "maybe"}}).status_code == 422
    assert client.put(f"/v1/contacts/{address}", json={"attributes": {"a.b": 1}}).status_code == 422
    assert client.put(f"/v1/contacts/{address}", json={"attributes": {"blob": "x" * 9000}}).status_code == 422
    assert client.put("/v1/contacts/not-an-address", json={}).status_code == 422
    assert client.get(f"/v1/contacts/{address}").status_code == 404
    assert client.get("/v1/lists/lst_0000000000000000").status_code == 404


def test_deleting_a_contact_removes_its_memberships(client: TestClient, unique: str) -> None:
    list_id = new_list(client, f"del-{unique}")
    for n in range(3):
        client.put(f"/v1/contacts/d{n}-{unique}@example.com", json={"lists": {list_id: "subscribed"}})
    assert client.delete(f"/v1/contacts/d1-{unique}@example.com").status_code == 204
    assert client.get(f"/v1/contacts/d1-{unique}@example.com").status_code == 404
    assert client.delete(f"/v1/contacts/d1-{unique}@example.com").status_code == 404
    assert [m["email"] for m in all_members(client, list_id)] == [f"d{n}-{unique}@example.com" for n in (0, 2)]


def test_deleting_a_list_removes_members_and_prunes_contacts(client: TestClient, unique: str) -> None:
    keep, drop = new_list(client, f"keep-{unique}"), new_list(client, f"drop-{unique}")
    address = f"pruned-{unique}@example.com"
    client.put(f"/v1/contacts/{address}", json={"lists": {keep: "subscribed", drop: "subscribed"}})
    assert client.delete(f"/v1/lists/{drop}").status_code == 204
    assert client.get(f"/v1/lists/{drop}").status_code == 404
    assert client.get(f"/v1/lists/{drop}/members").status_code == 404
    assert drop not in [lst["id"] for lst in client.get("/v1/lists").json()["data"]]
    # the contact stays, in the remaining list only
    assert client.get(f"/v1/contacts/{address}").json()["lists"] == {keep: "subscribed"}
    client.put(f"/v1/contacts/{address}", json={"name": "Still here"})
    assert [m["name"] for m in all_members(client, keep)] == ["Still here"]


CSV_BODY = """email,name,language,timezone,attributes,plan,score
good1-{u}@example.com,Ada,en,Europe/London,"{{""vip"": true}}",pro,42
not-an-address,Bob,en,UTC,,free,1
good2-{u}@example.com,Cy,de-AT,Mars/Base,,free,2
good3-{u}@example.com,"Dee, Jr.",,,"{{broken",team,3
good4-{u}@example.com,Eve,fr,Europe/Paris,,team,007

good5-{u}@example.com,,,,,,
"""


def test_csv_import_reports_bad_rows_by_line_and_imports_the_rest(client: TestClient, unique: str) -> None:
    list_id = new_list(client, f"csv-{unique}")
    # WHEN a CSV with a bad address, a bad time zone and broken attribute JSON is imported
    resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "csv"},
                       content=CSV_BODY.format(u=unique).encode(), headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    report = resp.json()
    # THEN each bad row is reported with its line number (the header is line 1) and nothing of it is written
    assert (report["imported"], report["failed"]) == (3, 3)
    errors = {e["row"]: e["message"] for e in report["errors"]}
    assert set(errors) == {3, 4, 5}
    assert errors[3].startswith("email:")
    assert "unknown time zone 'Mars/Base'" in errors[4]
    assert errors[5].startswith("attributes: not valid JSON")
    members = {m["email"]: m for m in all_members(client, list_id)}
    assert set(members) == {f"good{n}-{unique}@example.com" for n in (1, 4, 5)}
    ada = members[f"good1-{unique}@example.com"]
    # other columns are typed attributes; leading zeros stay text
    assert ada["attributes"] == {"vip": True, "plan": "pro", "score": 42}
    assert (ada["name"], ada["language"], ada["timezone"], ada["status"]) == ("Ada", "en", "Europe/London",
                                                                              "subscribed")
    assert members[f"good4-{unique}@example.com"]["attributes"]["score"] == "007"
    assert client.get(f"/v1/contacts/good2-{unique}@example.com").status_code == 404


def test_jsonl_import_streams_across_chunks(services: Services, unique: str) -> None:
    store = services.contacts
    target = store.create_list(f"jsonl-{unique}")
    rows = [{"email": f"j{n}-{unique}@example.com", "name": f"Jö {n}", "attributes": {"n": n}} for n in range(30)]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[10:10] = ["", "[1, 2]", json.dumps({"email": f"x-{unique}@example.com", "colour": "red"}), "{nope"]
    body = "\n".join(lines).encode()
    # WHEN the body arrives in 7-byte chunks (splitting lines and multi-byte characters)
    report = store.import_members(chunked(body, 7), list_id=target.id, fmt="jsonl")
    # THEN every valid row is imported and the bad lines are named
    assert (report.imported, report.failed) == (30, 3)
    assert [(e.row, e.message.split(":")[0]) for e in report.errors] == [
        (12, "each line must be a JSON object"), (13, "colour"), (14, "not valid JSON")]
    members = list(store.iter_list_members(target.id))
    assert sorted(m.name or "" for m in members) == sorted(f"Jö {n}" for n in range(30))


def test_api_jsonl_import_and_body_limit(client: TestClient, services: Services, unique: str) -> None:
    list_id = new_list(client, f"api-jsonl-{unique}")
    body = "\n".join(json.dumps({"email": f"a{n}-{unique}@example.com", "attributes": {"n": n}}) for n in range(50))
    resp = client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl", "status": "pending"},
                       content=body.encode())
    assert resp.json() == {"imported": 50, "failed": 0, "kept_unsubscribed": 0, "errors": []}
    assert len(all_members(client, list_id, status="pending")) == 50
    # a body over the API limit is refused (large files go through the CLI)
    too_big = b"x" * (services.settings.max_body_bytes + 1)
    assert client.post(f"/v1/lists/{list_id}/import", content=too_big).status_code == 413
    assert client.post("/v1/lists/lst_0000000000000000/import", content=b"email\n").status_code == 404
    bad_header = client.post(f"/v1/lists/{list_id}/import", content=b"name,Plan Type\nAda,pro\n")
    assert bad_header.status_code == 422
    assert "Plan Type" in bad_header.json()["detail"]


def test_import_keeps_unsubscribed_contacts_unsubscribed(services: Services, unique: str) -> None:
    store = services.contacts
    target = store.create_list(f"resub-{unique}")
    body = f"email,name\nu-{unique}@example.com,U\ns-{unique}@example.com,S\n".encode()
    store.import_members([body], list_id=target.id)
    store.upsert(f"u-{unique}@example.com", _upsert({"lists": {target.id: "unsubscribed"}}))
    report = store.import_members([body], list_id=target.id)
    assert (report.imported, report.kept_unsubscribed) == (2, 1)
    assert [m.email for m in store.iter_list_members(target.id)] == [f"s-{unique}@example.com"]
    assert store.get(f"u-{unique}@example.com").lists == {target.id: "unsubscribed"}


def _upsert(data: dict[str, Any]) -> ContactUpsert:
    return ContactUpsert.model_validate(data)


def test_import_of_2000_rows_writes_while_it_reads(settings: Settings, table: Table, unique: str) -> None:
    counted = Table(settings)  # its own request counter; the table fixture made the table
    store = ContactStore(counted)
    target = store.create_list(f"bulk-{unique}")
    header = "email,name,language,plan\n"
    body = (header + "".join(f"b{n}-{unique}@example.com,User {n},en,{'pro' if n % 2 else 'free'}\n"
                             for n in range(2000))).encode()
    requests_at_chunk: list[int] = []
    before = counted.requests
    # WHEN 2,000 rows stream in 4 KiB chunks
    report = store.import_members(chunked(body, 4096), list_id=target.id,
                                  progress=lambda n: requests_at_chunk.append(counted.requests))
    # THEN all are imported in batches: per 100 rows one BatchGetItem and 9 BatchWriteItems of <= 25 items
    assert (report.imported, report.failed) == (2000, 0)
    assert counted.requests - before == 1 + 20 * (1 + 9)
    # and writing began long before the end of the input: memory holds a chunk, not the file
    assert requests_at_chunk[len(requests_at_chunk) // 2] - before > 50
    assert sum(1 for _ in store.iter_list_members(target.id)) == 2000


def test_member_pages_return_every_member_exactly_once(client: TestClient, services: Services, unique: str) -> None:
    store = services.contacts
    target = store.create_list(f"pages-{unique}")
    body = "\n".join(json.dumps({"email": f"p{n:03d}-{unique}@example.com"}) for n in range(250)).encode()
    store.import_members([body], list_id=target.id, fmt="jsonl")
    unsubscribed = {f"p{n:03d}-{unique}@example.com" for n in range(0, 250, 7)}
    for address in unsubscribed:
        store.upsert(address, _upsert({"lists": {target.id: "unsubscribed"}}))
    # WHEN all members are read 40 at a time, and the subscribed ones 33 at a time
    every = [m["email"] for m in all_members(client, target.id, limit=40)]
    subscribed = [m["email"] for m in all_members(client, target.id, limit=33, status="subscribed")]
    # THEN each appears exactly once, in address order
    assert every == sorted(f"p{n:03d}-{unique}@example.com" for n in range(250))
    assert subscribed == [e for e in every if e not in unsubscribed]
    first = client.get(f"/v1/lists/{target.id}/members", params={"limit": 40}).json()
    assert len(first["data"]) == 40
    # a cursor that was tampered with or belongs to another list is refused
    other = new_list(client, f"other-{unique}")
    assert client.get(f"/v1/lists/{other}/members", params={"cursor": first["next_cursor"]}).status_code == 422
    assert client.get(f"/v1/lists/{target.id}/members", params={"cursor": "not*base64"}).status_code == 422


def test_list_iteration_is_lazy(settings: Settings, table: Table, unique: str) -> None:
    counted = Table(settings)  # its own request counter; the table fixture made the table
    store = ContactStore(counted)
    target = store.create_list(f"lazy-{unique}")
    body = "\n".join(json.dumps({"email": f"l{n}-{unique}@example.com"}) for n in range(120)).encode()
    store.import_members([body], list_id=target.id, fmt="jsonl")
    before = counted.requests
    members = store.iter_list_members(target.id, page_size=50)
    assert counted.requests - before == 1  # the list's GetItem, nothing else yet
    assert len(list(islice(members, 10))) == 10
    assert counted.requests - before == 2  # one page
    assert len(list(members)) == 110
    assert counted.requests - before == 4  # three pages of 50, 50, 20
    with pytest.raises(ListNotFound):
        store.iter_list_members("lst_0000000000000000")


def test_engagement_keeps_the_latest_event(services: Services, unique: str) -> None:
    store = services.contacts
    address = f"eng-{unique}@example.com"
    store.upsert(address, _upsert({"name": "E"}))
    late = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert store.record_engagement(address, "open", late)
    assert not store.record_engagement(address, "open", late - timedelta(days=1))  # arrived out of order
    assert store.record_engagement(address.upper().replace("@EXAMPLE.COM", "@example.com"), "click", late)
    assert not store.record_engagement(f"nobody-{unique}@example.com", "open", late)
    contact = store.get(address)
    assert (contact.last_opened_at, contact.last_clicked_at) == (late, late)
    # an upsert after engagement keeps it
    store.upsert(address, _upsert({"name": "E2"}))
    assert store.get(address).last_opened_at == late


def test_iter_contacts_reaches_every_shard(services: Services, unique: str) -> None:
    store = services.contacts
    target = store.create_list(f"shards-{unique}")
    body = "\n".join(json.dumps({"email": f"s{n}-{unique}@example.com"}) for n in range(64)).encode()
    store.import_members([body], list_id=target.id, fmt="jsonl")
    mine = [c.email for c in store.iter_contacts() if c.email.endswith(f"-{unique}@example.com")]
    assert sorted(mine) == sorted(f"s{n}-{unique}@example.com" for n in range(64))


def test_import_rejects_unreadable_files(services: Services, unique: str) -> None:
    store = services.contacts
    target = store.create_list(f"unreadable-{unique}")
    with pytest.raises(InvalidImport, match="email"):
        store.import_members([b"name,plan\nAda,pro\n"], list_id=target.id)
    with pytest.raises(InvalidImport, match="UTF-8"):
        store.import_members([b"email,name\nx@example.com,J\xf6rg\n"], list_id=target.id)


def test_cli_creates_a_list_and_imports_a_file_by_its_name(tmp_path: Path, app_env: dict[str, str],
                                                           services: Services, unique: str) -> None:
    def jetmail(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jetmail.cli", *args], env=app_env, capture_output=True,
                              text=True, timeout=120)

    created = jetmail("lists", "create", f"cli-{unique}")
    assert created.returncode == 0, created.stderr
    list_id = created.stdout.strip().splitlines()[-1]
    rows = "".join(f"c{n}-{unique}@example.com,Person {n},{n}\n" for n in range(300))
    path = tmp_path / "contacts.csv"
    path.write_text(f"email,name,visits\n{rows}broken-address,Nobody,1\n")
    # WHEN the CLI imports the file into the list named on the command line
    done = jetmail("contacts", "import", str(path), "--list", f"cli-{unique}")
    # THEN it prints a summary and the bad line, and exits 1 because a row failed
    assert done.returncode == 1, done.stderr
    assert f"imported 300 row(s) into cli-{unique} ({list_id}); 1 failed" in done.stdout
    assert "line 302: email:" in done.stdout
    members = list(services.contacts.iter_list_members(list_id))
    assert len(members) == 300
    assert {m.attributes["visits"] for m in members} == set(range(300))
    shown = jetmail("contacts", "get", f"c7-{unique}@example.com")
    assert json.loads(shown.stdout)["lists"] == {list_id: "subscribed"}
    missing = jetmail("contacts", "import", str(path), "--list", f"no-such-list-{unique}")
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error: no list with the id or name 'no-such-list-{unique}'")
