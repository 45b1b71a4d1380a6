"""The dashboard's suppression list in pages: a "next page" link with an opaque cursor until the oldest entry,
and a 400 page for a cursor the dashboard did not hand out."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.deliverability.suppressions import Suppression
from jetmail.devstack.stack import StackState
from stacktools import Isolated

TOTAL = 130
ERASED_AT = 9  # newest-first position of the erased entry: the last of the first page of ten


@pytest.fixture(scope="module")
def isolated(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Isolated]:
    # a table of its own, so the list holds exactly this module's suppressions
    own = Isolated(stack, tmp_path_factory.mktemp("dashboard-paging"))
    yield own
    own.close()


@pytest.fixture(scope="module")
def newest_first(isolated: Isolated) -> list[str]:
    """TOTAL suppressions, one of them an erased address (kept as its pseudonym); their addresses as the
    store lists them, newest first."""
    store = isolated.services.suppressions
    for index in range(TOTAL):
        if index == TOTAL - 1 - ERASED_AT:
            store.add_erased(f"erased{index}@paging.example.com")
        else:
            store.add(f"s{index:03d}@paging.example.com", reason="hard_bounce" if index % 2 else "unsubscribed",
                      source="test")
    listed: list[Suppression] = []
    start = None
    while True:
        items, start = store.list(limit=500, start=start)
        listed += items
        if not start:
            break
    assert len(listed) == TOTAL and listed[ERASED_AT].reason == "erased"
    return [entry.email for entry in listed]


@pytest.fixture(scope="module")
def browser(isolated: Isolated) -> Iterator[TestClient]:
    app = create_app(isolated.settings, services=isolated.services)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        form = client.get("/dashboard/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf
        login = client.post("/dashboard/login", data={"api_key": isolated.token, "csrf": csrf.group(1)})
        assert login.status_code == 303, login.text
        yield client


def rows(page: Any) -> list[str]:
    return [html.unescape(a) for a in re.findall(r"<tr><td>(.*?)</td>", page.text)]


def next_link(page: Any) -> str | None:
    found = re.findall(r'<a href="([^"]+)" rel="next">', page.text)
    assert len(found) <= 1
    return html.unescape(found[0]) if found else None


def walk(browser: TestClient, first: str) -> list[list[str]]:
    """Every page from ``first`` on, following the next-page links; each page's addresses."""
    pages = []
    url: str | None = first
    while url is not None:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        pages.append(rows(page))
        url = next_link(page)
        assert len(pages) <= TOTAL, "the links go round in circles"
    return pages


def test_the_list_pages_through_every_suppression(browser: TestClient, newest_first: list[str]) -> None:
    # GIVEN more suppressions than a page holds  WHEN the list is opened
    first = browser.get("/dashboard/suppressions")
    # THEN the newest 100 are shown, with a link to the next page
    assert first.status_code == 200
    assert rows(first) == newest_first[:100]
    link = next_link(first)
    assert link is not None and link.startswith("/dashboard/suppressions?cursor=")
    # AND the link carries an opaque cursor, not an address
    assert "@" not in link and "paging.example.com" not in link
    # WHEN the link is followed  THEN the next page holds the rest and links no further
    second = browser.get(link)
    assert second.status_code == 200
    assert rows(second) == newest_first[100:]
    assert next_link(second) is None
    assert "Older suppressions" in second.text and 'href="/dashboard/suppressions">Back to the newest' in second.text


def test_a_small_page_size_walks_the_whole_list_in_order(browser: TestClient, newest_first: list[str]) -> None:
    # WHEN the list is read ten at a time (the cursor after the first page is the erased entry's)
    pages = walk(browser, "/dashboard/suppressions?limit=10")
    # THEN every suppression is shown once, newest first, and the last page is full with no link to an empty one
    assert [len(page) for page in pages] == [10] * (TOTAL // 10)
    assert [email for page in pages for email in page] == newest_first
    assert pages[0][ERASED_AT].startswith("hmac:")
    # AND a page size that does not divide the list ends with the remainder
    uneven = walk(browser, "/dashboard/suppressions?limit=7")
    assert [len(page) for page in uneven] == [7] * (TOTAL // 7) + [TOTAL % 7]
    assert [email for page in uneven for email in page] == newest_first


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "not a cursor!",
    "bm90IGpzb24",  # base64 of "not json"
    _cursor(["a", "list"]),
    _cursor({"t": "2026-01-01T00:00:00+00:00#a@b.example", "k": "SUPP#c@d.example", "s": "SUPP"}),  # keys disagree
    _cursor({"t": "yesterday#a@b.example", "k": "SUPP#a@b.example", "s": "SUPP"}),
    _cursor({"t": "2026-01-01T00:00:00+00:00#hmac:xyz", "k": "SUPP#ERASED", "s": "xyz"}),
    _cursor({"t": "2026-01-01T00:00:00+00:00#a@b.example", "k": "SUPP#a@b.example", "s": "SUPP", "x": 1}),
    _cursor({"gsi1pk": {"S": "CAMPAIGNS"}, "gsi1sk": {"S": "x"}, "pk": {"S": "CAMPAIGN#1"}, "sk": {"S": "META"}}),
    "A" * 5000,
])
def test_a_bad_cursor_is_a_400_page(browser: TestClient, newest_first: list[str], cursor: str) -> None:
    # WHEN the list is asked for with a cursor the dashboard did not hand out
    resp = browser.get("/dashboard/suppressions", params={"cursor": cursor})
    # THEN the answer is a 400 page that says so, with the dashboard's headers, and no suppression in it
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("text/html")
    assert "That link to more suppressions is not valid" in resp.text
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"
    assert not rows(resp)


def test_a_page_size_out_of_range_is_refused(browser: TestClient, newest_first: list[str]) -> None:
    for limit in ("0", "501", "ten"):
        resp = browser.get("/dashboard/suppressions", params={"limit": limit})
        assert resp.status_code == 422 and "Invalid input" in resp.text, limit


def test_a_search_ignores_the_cursor_and_keeps_the_page_size(browser: TestClient, newest_first: list[str]) -> None:
    # GIVEN a search that matches more addresses than the page size
    link = next_link(browser.get("/dashboard/suppressions"))
    assert link is not None
    found = browser.get(link + "&q=paging.example&limit=5")
    # THEN the search's first matches are shown, newest first, without a next-page link
    assert found.status_code == 200
    assert rows(found) == [e for e in newest_first if "paging.example" in e][:5]
    assert "(the first 5)" in found.text and next_link(found) is None
