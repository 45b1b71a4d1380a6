"""The dashboard's list pages: every list with its visibility and opt-in mode, and per list a form for its
public settings (CSRF-protected) and the subscribe form snippet the API serves, on the session stack."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.services import Services


@pytest.fixture(scope="module")
def app(services: Services) -> FastAPI:
    return create_app(services.settings, services=services)


@pytest.fixture(scope="module")
def browser(app: FastAPI, api_token: str) -> Iterator[TestClient]:
    """A browser logged in to the dashboard with the stack's admin key."""
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        form = client.get("/dashboard/login")
        resp = client.post("/dashboard/login", data={"api_key": api_token, "csrf": csrf_of(form.text)})
        assert resp.status_code == 303, resp.text
        yield client


@pytest.fixture(scope="module")
def api(app: FastAPI, api_token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {api_token}"}) as client:
        yield client


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has a CSRF field"
    return match.group(1)


def snippet_of(page: str) -> str | None:
    match = re.search(r'<textarea id="snippet"[^>]*>(.*?)</textarea>', page, re.S)
    return html.unescape(match.group(1)) if match else None


def settings_form(lst: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The settings form as the browser sends it: an unticked checkbox is left out."""
    fields = {"title": lst.get("title") or "", "description": lst.get("description") or "",
              "opt_in": lst["opt_in"], "form_fields": ", ".join(lst["form_fields"]),
              **({"public": "1"} if lst["public"] else {}), **changes}
    return {k: v for k, v in fields.items() if v is not None}


def test_the_lists_page_shows_each_list_and_a_list_page_its_settings_and_form(
        browser: TestClient, api: TestClient, unique: str) -> None:
    # GIVEN a private list and a public single opt-in one with form fields
    private = api.post("/v1/lists", json={"name": f"<staff {unique}>"}).json()
    public = api.post("/v1/lists", json={"name": f"news-{unique}", "public": True, "opt_in": "single",
                                         "title": "Product news", "form_fields": ["company"]}).json()
    # WHEN the lists page is opened
    page = browser.get("/dashboard/lists")
    # THEN both are listed, linking to their pages, with visibility, public id and opt-in mode; names escaped
    assert page.status_code == 200, page.text
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr>\s*<td><a href="/dashboard/lists/(lst_[0-9a-f]+)">'
                                                        r"(.*?)</tr>", page.text, re.S)}
    assert "private" in rows[private["id"]] and "double" in rows[private["id"]]
    assert f"&lt;staff {unique}&gt;" in rows[private["id"]] and f"<staff {unique}>" not in page.text
    assert "public" in rows[public["id"]] and public["public_id"] in rows[public["id"]]
    assert "single" in rows[public["id"]] and "company" in rows[public["id"]]
    # WHEN the public list's page is opened THEN it shows the API's form snippet, the same text to the byte
    shown = browser.get(f"/dashboard/lists/{public['id']}")
    assert shown.status_code == 200, shown.text
    served = api.get(f"/v1/lists/{public['id']}/form")
    assert served.status_code == 200 and snippet_of(shown.text) == served.text
    assert f"/subscribe/{public['public_id']}" in served.text
    assert 'value="Product news"' in shown.text and 'name="public" value="1" checked' in shown.text
    # AND a private list's page has the settings form but no snippet
    hidden = browser.get(f"/dashboard/lists/{private['id']}")
    assert hidden.status_code == 200 and snippet_of(hidden.text) is None and "make it public first" in hidden.text
    # AND an unknown list is a 404 page
    assert browser.get("/dashboard/lists/lst_0000000000000000").status_code == 404
    assert browser.get("/dashboard/lists/" + "x" * 300).status_code == 404


def test_the_settings_form_changes_a_list_only_with_its_csrf_token(browser: TestClient, api: TestClient,
                                                                   unique: str) -> None:
    made = api.post("/v1/lists", json={"name": f"club-{unique}"}).json()
    path = f"/dashboard/lists/{made['id']}"
    csrf = csrf_of(browser.get(path).text)
    # WHEN the form makes it public, with a title, description, single opt-in and two form fields
    resp = browser.post(path, data=settings_form(made, csrf=csrf, public="1", title="The Club",
                                                 description="Once a <week>.", opt_in="single",
                                                 form_fields="company,  role"))
    # THEN the browser goes back to the page, which says so, and the API sees the new settings
    assert resp.status_code == 303 and resp.headers["location"] == f"{path}?done=saved", resp.text
    assert "settings are saved" in browser.get(resp.headers["location"]).text
    stored = api.get(f"/v1/lists/{made['id']}").json()
    assert (stored["public"], stored["title"], stored["description"], stored["opt_in"], stored["form_fields"]) == \
        (True, "The Club", "Once a <week>.", "single", ["company", "role"])
    # AND the page now shows the snippet with the new title and fields
    snippet = snippet_of(browser.get(path).text)
    assert snippet is not None and "<h2>The Club</h2>" in snippet and 'name="role"' in snippet
    # WHEN it is sent unticked, with the title emptied THEN the list is private again and its title cleared
    resp = browser.post(path, data=settings_form(stored, csrf=csrf, public=None, title=""))
    assert resp.status_code == 303, resp.text
    stored = api.get(f"/v1/lists/{made['id']}").json()
    assert stored["public"] is False and stored.get("title") is None and stored["form_fields"] == ["company", "role"]
    # WHEN bad values are sent THEN a 422 page keeps the form and names the problem; nothing changes
    for bad in ({"opt_in": "triple"}, {"form_fields": "email"}, {"form_fields": "a b!"}, {"title": "x" * 201}):
        resp = browser.post(path, data=settings_form(stored, csrf=csrf, **bad))
        assert resp.status_code == 422, (bad, resp.text)
        assert 'role="alert"' in resp.text and 'id="list-settings"' in resp.text
    assert api.get(f"/v1/lists/{made['id']}").json() == stored
    # WHEN the form comes without its token, with a forged one, or from another site THEN 403, nothing changes
    for data, headers in (({}, {}), ({"csrf": csrf[:-1] + ("y" if csrf.endswith("x") else "x")}, {}),
                          ({"csrf": csrf}, {"origin": "https://evil.example", "sec-fetch-site": "cross-site"})):
        resp = browser.post(path, data=settings_form(stored, public="1", **data), headers=headers)
        assert resp.status_code == 403, (data, headers)
    assert api.get(f"/v1/lists/{made['id']}").json() == stored
    # AND an unknown list is a 404 page
    resp = browser.post("/dashboard/lists/lst_0000000000000000", data=settings_form(stored, csrf=csrf))
    assert resp.status_code == 404
