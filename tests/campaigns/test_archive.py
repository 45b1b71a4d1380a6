"""A public list's campaign archive and its Atom feed, and "view in browser", on the real stack: one small
campaign through the worker to the SMTP sink, then its public pages."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import api_client, cli_runner, run_cli

HTML = ('<p>Hello {{ recipient.name }}, your code is {{ attributes.code }}.</p>'
        '<p><a href="{{ view_in_browser_url }}">View in your browser</a> · '
        '<a href="{{ preferences_url }}">Preferences</a> · <a href="https://example.com/offer">Offer</a></p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ company.address }}</p>')
ATOM = "{http://www.w3.org/2005/Atom}"


@dataclass(frozen=True)
class Sent:
    campaign_id: str
    public_id: str
    private_list: str
    email: str
    name: str
    code: str
    html: str


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token, follow_redirects=False)


def links(html: str) -> list[str]:
    return [m.replace("&amp;", "&") for m in re.findall(r'href="([^"]+)"', html)]


@pytest.fixture(scope="module")
def sent(client: TestClient, services: Services, mailbox: Mailbox) -> Sent:
    """An archived campaign to a public list of one contact, sent; its mail as the contact received it."""
    unique = uuid.uuid4().hex[:10]
    template = f"archived-{unique}"
    resp = client.post("/v1/templates", json={"name": template, "locale": "en", "subject": "Issue {{ issue }}",
                                              "html": HTML, "category": "marketing",
                                              "sample_context": {"issue": 1, "attributes": {"code": "X"}}})
    assert resp.status_code == 201, resp.text
    public = client.post("/v1/lists", json={"name": f"archive-{unique}", "public": True, "title": "Weekly news",
                                            "description": "Our weekly letter", "opt_in": "single"}).json()
    private = client.post("/v1/lists", json={"name": f"private-{unique}"}).json()
    email, name, code = f"reader-{unique}@archive.example.com", f"Ottilie{unique}", f"SECRET{unique}"
    memberships = {public["id"]: "subscribed", private["id"]: "subscribed"}
    resp = client.put(f"/v1/contacts/{email}", json={"name": name, "attributes": {"code": code},
                                                     "lists": memberships})
    assert resp.status_code in (200, 201), resp.text
    resp = client.post("/v1/campaigns", json={
        "name": f"Issue 7 {unique}", "template": template, "context": {"issue": 7}, "archive": True,
        "archive_context": {"attributes": {"code": "SAMPLE-CODE"}},
        "audience": [{"list_id": public["id"]}, {"list_id": private["id"]}]})
    assert resp.status_code == 201, resp.text
    assert resp.json()["archive"] is True
    campaign_id = resp.json()["id"]
    resp = client.post(f"/v1/campaigns/{campaign_id}/send")
    assert resp.status_code == 200, resp.text

    def done() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent"
                    and mailbox.for_recipient(email))

    wait_until(done, timeout=60, what="the archived campaign sent")
    [entry] = mailbox.for_recipient(email)
    body = mailbox.message(entry.id).get_body(preferencelist=("html",))
    assert body is not None
    return Sent(campaign_id=campaign_id, public_id=public["public_id"], private_list=private["id"], email=email,
                name=name, code=code, html=body.get_content())


def test_the_archive_page_and_feed_list_an_archived_campaign_without_recipient_data(
        client: TestClient, sent: Sent) -> None:
    # GIVEN an archived campaign, sent to a public list  WHEN its archive page is fetched without an API key
    anonymous = {"Authorization": ""}
    index = client.get(f"/archive/{sent.public_id}", headers=anonymous)
    # THEN it lists the campaign under its subject, with the list's title and a feed link
    assert index.status_code == 200, index.text
    assert "Weekly news" in index.text and "Issue 7" in index.text
    assert f"/archive/{sent.public_id}/{sent.campaign_id}" in index.text
    # and the feed has it as an Atom entry
    feed = client.get(f"/archive/{sent.public_id}/feed.atom", headers=anonymous)
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("application/atom+xml")
    root = ElementTree.fromstring(feed.content)  # noqa: S314 - our own feed, parsed to prove it is well-formed
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == ["Issue 7"]
    assert entries[0].findtext(f"{ATOM}id", "").endswith(f"/archive/{sent.public_id}/{sent.campaign_id}")
    # and the archived copy renders with the archive's values, no recipient's data, no tracking
    page = client.get(f"/archive/{sent.public_id}/{sent.campaign_id}", headers=anonymous)
    assert page.status_code == 200, page.text
    assert "SAMPLE-CODE" in page.text
    for private in (sent.email, sent.name, sent.code, "/t/o/", "/t/c/", "/u/", "/p/", "/v/"):
        assert private not in page.text and private not in index.text and private not in feed.text
    assert "script-src" not in page.headers["content-security-policy"]
    # and the archive follows the browser's language, German or else English
    german = client.get(f"/archive/{sent.public_id}", headers={"Accept-Language": "fr;q=0.9, de-CH, en;q=0.5"})
    assert 'lang="de"' in german.text and "frühere E-Mails" in german.text
    assert 'lang="en"' in client.get(f"/archive/{sent.public_id}", headers={"Accept-Language": "fr"}).text


def test_only_archived_sent_campaigns_of_public_lists_are_shown(
        client: TestClient, sent: Sent, app_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # WHEN the campaign is taken out of the archive with the CLI
    with cli_runner(app_env, tmp_path, monkeypatch) as cli:
        run_cli(cli, "campaign", "archive", sent.campaign_id, "--off")
    try:
        assert client.get(f"/v1/campaigns/{sent.campaign_id}").json()["archive"] is False
        # THEN neither the index nor its page shows it
        assert sent.campaign_id not in client.get(f"/archive/{sent.public_id}").text
        assert client.get(f"/archive/{sent.public_id}/{sent.campaign_id}").status_code == 404
    finally:
        assert client.patch(f"/v1/campaigns/{sent.campaign_id}", json={"archive": True}).status_code == 200
    # and a private list (by its internal id) or an unknown id has no archive: a 404 page, not a 500
    for path in (f"/archive/{sent.private_list}", "/archive/pub_nosuchlist", f"/archive/{sent.public_id}/cmp_nope",
                 "/archive/pub_nosuchlist/feed.atom"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert resp.headers["content-type"].startswith("text/html")
    # and archive_context may not shadow a name every render fills in
    resp = client.patch(f"/v1/campaigns/{sent.campaign_id}", json={"archive_context": {"recipient": "x"}})
    assert resp.status_code == 422


def test_view_in_browser_renders_the_recipients_own_copy_and_refuses_a_tampered_token(
        client: TestClient, sent: Sent, services: Services) -> None:
    # GIVEN the view-in-browser link of the mail the contact received
    [view] = [link for link in links(sent.html) if "/v/" in link]
    base = services.settings.public_base_url.rstrip("/")
    assert view.startswith(f"{base}/v/")
    path = view[len(base):]
    # WHEN it is opened without an API key
    page = client.get(path, headers={"Authorization": ""})
    # THEN it is this recipient's own copy: their name and code, their own links, and no tracking
    assert page.status_code == 200, page.text
    assert sent.name in page.text and sent.code in page.text
    assert path.replace("/v/", "/u/") in page.text and "/t/c/" not in page.text and "/t/o/" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    # WHEN the token is tampered with THEN a 404 page, not their copy
    token = path.rsplit("/", 1)[1]
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "x" + token, "garbage", "a.b"):
        resp = client.get(f"/v/{bad}")
        assert resp.status_code == 404 and sent.name not in resp.text, bad
