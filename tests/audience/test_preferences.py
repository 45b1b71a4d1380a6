"""The preference centre (``/p/<token>``) on the real stack: opened from a marketing mail received at the SMTP
sink, changed only by POSTs that carry its CSRF token, never by a GET of any link in the mail."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.compliance.preferences import CsrfTokens
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.services import Services
from stacktools import api_client

HTML = ('<p>Hello {{ recipient.name }}</p>'
        '<p><a href="{{ preferences_url }}">Preferences</a> · <a href="{{ view_in_browser_url }}">View online</a> · '
        '<a href="https://example.com/offer">Offer</a></p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ company.address }}</p>')


@dataclass(frozen=True)
class Mailed:
    email: str
    lists: dict[str, dict[str, Any]]  # "kept", "other", "double" -> the list as the API returned it
    message: EmailMessage
    preferences: str  # path of the preference centre


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token, follow_redirects=False)


@pytest.fixture(scope="module")
def template(client: TestClient) -> str:
    name = "preferences-test"
    resp = client.post("/v1/templates", json={"name": name, "locale": "en", "subject": "News", "html": HTML,
                                              "category": "marketing"})
    assert resp.status_code == 201, resp.text
    return name


def links(message: EmailMessage) -> list[str]:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return [m.replace("&amp;", "&") for m in re.findall(r'href="([^"]+)"', body.get_content())]


@pytest.fixture
def mailed(client: TestClient, services: Services, mailbox: Mailbox, template: str, unique: str) -> Mailed:
    """A German-speaking contact in one of three public lists, and a marketing mail to them at the sink."""
    lists = {role: client.post("/v1/lists", json={"name": f"{role}-{unique}", "public": True, "opt_in": opt_in,
                                                  "title": f"{role.title()} {unique}"}).json()
             for role, opt_in in (("kept", "single"), ("other", "single"), ("double", "double"))}
    address = f"prefs-{unique}@prefs.example.com"
    resp = client.put(f"/v1/contacts/{address}", json={"name": "Grete", "language": "de-AT",
                                                       "lists": {lists["kept"]["id"]: "subscribed"}})
    assert resp.status_code in (200, 201), resp.text
    resp = client.post("/v1/messages", json={"template": template, "to": address})
    assert resp.status_code == 202, resp.text
    wait_until(lambda: mailbox.for_recipient(address), timeout=30, what="the marketing mail at the sink")
    [entry] = mailbox.for_recipient(address)
    message = mailbox.message(entry.id)
    base = services.settings.public_base_url.rstrip("/")
    [preferences] = [link[len(base):] for link in links(message) if link.startswith(f"{base}/p/")]
    return Mailed(email=address, lists=lists, message=message, preferences=preferences)


def statuses(client: TestClient, mailed: Mailed) -> dict[str, str | None]:
    lists = client.get(f"/v1/contacts/{mailed.email}").json()["lists"]
    return {role: lists.get(lst["id"]) for role, lst in mailed.lists.items()}


def csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def test_a_get_of_every_link_in_a_marketing_mail_changes_nothing(client: TestClient, services: Services,
                                                                 mailed: Mailed) -> None:
    # GIVEN every link of the mail and its List-Unsubscribe header, as a link scanner finds them
    base = services.settings.public_base_url.rstrip("/")
    found = [*links(mailed.message), mailed.message["List-Unsubscribe"].strip("<>")]
    ours = [link[len(base):] for link in found if link.startswith(base)]
    kinds = {path.split("/")[1] for path in ours}
    assert kinds >= {"p", "u", "t"}
    assert "v" not in kinds  # a copy in the browser exists for campaign mail only (tests/campaigns/test_archive.py)
    before = statuses(client, mailed)
    # WHEN each one is fetched with a GET (and a HEAD), without an API key
    for path in ours:
        for method in ("GET", "HEAD"):
            resp = client.request(method, path, headers={"Authorization": ""})
            assert resp.status_code in (200, 302, 404, 405), (method, path, resp.status_code)
    # THEN no list changed and the address is not suppressed
    assert statuses(client, mailed) == before == {"kept": "subscribed", "other": None, "double": None}
    assert services.suppressions.get(mailed.email) is None
    # and the preference centre shows every public list in the contact's language, with labels for each box
    page = client.get(mailed.preferences).text
    assert "Ihre E-Mail-Einstellungen" in page and 'lang="de"' in page
    for lst in mailed.lists.values():
        assert lst["title"] in page
        box = re.search(rf'<input type="checkbox" id="([^"]+)" name="list" value="{lst["public_id"]}"([^>]*)>', page)
        assert box and f'<label for="{box.group(1)}">' in page
        assert (" checked" in box.group(2)) is (lst is mailed.lists["kept"])


def test_preferences_change_lists_and_unsubscribe_from_everything_by_post(
        client: TestClient, services: Services, mailbox: Mailbox, mailed: Mailed) -> None:
    page = client.get(mailed.preferences).text
    token = csrf(page)
    # WHEN the form is posted with the second list ticked and the first one not
    resp = client.post(mailed.preferences, data={"csrf": token, "action": "save",
                                                 "list": [mailed.lists["other"]["public_id"],
                                                          mailed.lists["double"]["public_id"]]})
    # THEN the first is left, the single opt-in one joined, the double opt-in one pending its confirmation
    assert resp.status_code == 200, resp.text
    assert "Einstellungen gespeichert" in resp.text
    assert statuses(client, mailed) == {"kept": "unsubscribed", "other": "subscribed", "double": "pending"}
    wait_until(lambda: len(mailbox.for_recipient(mailed.email)) == 2, timeout=30, what="the confirmation mail")
    # WHEN "send me my data" is posted THEN the export arrives as a JSON attachment
    resp = client.post(mailed.preferences, data={"csrf": token, "action": "data"})
    assert resp.status_code == 200, resp.text
    wait_until(lambda: len(mailbox.for_recipient(mailed.email)) == 3, timeout=30, what="the data export mail")
    newest = max(mailbox.for_recipient(mailed.email), key=lambda e: e.received_at)
    [attachment] = list(mailbox.message(newest.id).iter_attachments())
    assert attachment.get_filename() == "my-data.json"
    content = attachment.get_content()
    assert mailed.email in (content.decode() if isinstance(content, bytes) else content)
    # WHEN "unsubscribe from everything" is posted THEN the address is suppressed for marketing mail
    resp = client.post(mailed.preferences, data={"csrf": token, "action": "all"})
    assert resp.status_code == 200 and "abgemeldet" in resp.text
    entry = services.suppressions.get(mailed.email)
    assert entry is not None and entry.reason == "unsubscribed"


def tampered(value: str) -> str:
    """``value`` with its last character changed (to another one, whatever it was)."""
    return value[:-1] + ("y" if value.endswith("x") else "x")


def test_a_post_without_a_valid_csrf_token_is_refused(client: TestClient, services: Services, mailed: Mailed) -> None:
    before = statuses(client, mailed)
    other = mailed.lists["other"]["public_id"]
    page_token = mailed.preferences.rsplit("/", 1)[1]
    # WHEN the form is posted without its CSRF token, with a forged one, or with one for another page
    for fields in ({"action": "save", "list": other}, {"csrf": "1.forged", "action": "all"},
                   {"csrf": "", "action": "all"}, {"csrf": tampered(csrf(client.get(mailed.preferences).text))}):
        resp = client.post(mailed.preferences, data=fields)
        # THEN 403 with a page that says the form expired, and nothing changed
        assert resp.status_code == 403, fields
        assert "abgelaufen" in resp.text
    assert statuses(client, mailed) == before
    # and a CSRF token is bound to its page's token and to a day
    tokens = CsrfTokens(services.signer)
    issued = tokens.issue(page_token, now=1_000_000)
    assert tokens.valid(page_token, issued, now=1_000_000 + 3600)
    assert not tokens.valid(page_token, issued, now=1_000_000 + 86_401)
    assert not tokens.valid(tampered(page_token), issued, now=1_000_000)
    # and a tampered page token is a 404 page for GET and POST alike, never a 500
    for path in (tampered(mailed.preferences), "/p/garbage", "/p/a.b"):
        assert client.get(path).status_code == 404
        assert client.post(path, data={"csrf": "x", "action": "all"}).status_code == 404
    assert statuses(client, mailed) == before
