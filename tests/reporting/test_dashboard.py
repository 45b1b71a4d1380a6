"""The dashboard: login and sessions, every page on real data, CSRF, security headers, the SVG charts, and
a real headless Chromium logging in through the form and taking a screenshot of a campaign report."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.campaigns.model import AudienceSource, CampaignCreate
from jetmail.dashboard.charts import Box, Series, bar_chart, funnel_chart, line_chart, nice_ceiling, x_of, y_of
from jetmail.dashboard.session import SESSION_COOKIE, SESSION_TTL_S, Sessions, same_origin
from jetmail.dashboard.views import hourly
from jetmail.deliverability.reputation import read_state, write_state
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, free_port, http_ready, stop_process, wait_until
from jetmail.messaging.templating import EXAMPLE_TEMPLATES_DIR, load_template_dir
from jetmail.queue import NotFoundError
from jetmail.reporting.reports import TimelinePoint
from jetmail.scheduler import tick
from jetmail.services import Services
from jetmail.storage.table import Table
from stacktools import make_settings

SVG = "{http://www.w3.org/2000/svg}"
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}
CSP = {"default-src 'none'", "style-src 'self'", "img-src 'self' data:", "form-action 'self'", "frame-ancestors 'none'"}
PAGES = ["/dashboard", "/dashboard/campaigns", "/dashboard/messages", "/dashboard/suppressions", "/dashboard/dlq",
         "/dashboard/sending", "/dashboard/webhooks", "/dashboard/lists"]


# ---- fixtures and helpers
@pytest.fixture(scope="module")
def app(services: Services, settings: Any) -> FastAPI:
    return create_app(settings, services=services)


@pytest.fixture
def browser(app: FastAPI) -> Iterator[TestClient]:
    """An anonymous browser: HTTPS so the Secure cookies are kept and sent back."""
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as c:
        yield c


@pytest.fixture(scope="module")
def api(app: FastAPI, api_token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {api_token}"}) as c:
        yield c


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has a CSRF field"
    return match.group(1)


def log_in(client: TestClient, token: str) -> Any:
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    return client.post("/dashboard/login", data={"api_key": token, "csrf": csrf_of(form.text)})


def logged_in(client: TestClient, token: str) -> TestClient:
    resp = log_in(client, token)
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/campaigns", resp.text
    return client


def redirected_to_login(resp: Any) -> bool:
    return bool(resp.status_code == 303 and resp.headers["location"] == "/dashboard/login")


def parse_svg(text: str) -> ET.Element:
    return ET.fromstring(str(text))  # noqa: S314 - our own charts, parsed to prove they are well-formed XML


def svgs_of(html: str) -> list[ET.Element]:
    return [parse_svg(m) for m in re.findall(r"<svg .*?</svg>", html, flags=re.S)]


@pytest.fixture(scope="module")
def report_campaign(api: TestClient, services: Services, mailbox: Mailbox, email_worker: Any) -> dict[str, Any]:
    """A small A/B campaign, sent through the real worker, with human opens and clicks on some of its mail."""
    unique = os.urandom(4).hex()
    domain = f"dash{unique}.example.com"
    rows = [{"email": f"r{i}@{domain}", "name": f"Reader {i}"} for i in range(6)]
    list_id = api.post("/v1/lists", json={"name": f"dash-{unique}"}).json()["id"]
    imported = api.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"},
                        content="\n".join(json.dumps(r) for r in rows).encode())
    assert imported.status_code == 200 and imported.json()["failed"] == 0, imported.text
    resp = api.post("/v1/campaigns", json={
        "name": f'Spring <sale> & "friends" {unique}', "template": "getting_started", "context": CONTEXT,
        "audience": [{"list_id": list_id}],
        "ab_test": {"variants": [{"name": "A", "subject": "Hello A"}, {"name": "B", "subject": "Hello B"}],
                    "test_percentage": 100, "fallback": "manual", "test_duration": "PT4H"}})
    assert resp.status_code == 201, resp.text
    campaign_id = resp.json()["id"]
    assert api.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

    def all_sent() -> bool:
        tick(services)
        return bool(api.get(f"/v1/campaigns/{campaign_id}").json()["progress"]["sent"] == len(rows))

    wait_until(all_sent, timeout=90, what="campaign mail sent")
    wait_until(lambda: sum(1 for r in mailbox.by_recipient() if r.endswith(domain)) == len(rows), timeout=30,
               what="campaign mail received")
    sent_at = datetime.now(UTC)
    for index, row in enumerate(rows[:4]):
        later = sent_at + timedelta(hours=1 + index // 2)  # readers over the next hours (not prefetches)
        entry = mailbox.for_recipient(row["email"])[0]
        html = message_from_bytes(mailbox.raw(entry.id), policy=policy.default).get_body(
            preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        pixel = re.findall(r'src="[^"]*/t/o/([^"]+)"', html)[0]
        assert services.tracker.open(pixel, user_agent=HUMAN_UA, ip="203.0.113.9", country="DE" if index else "FR",
                                     now=later)
        if index < 2:
            click = re.findall(r'href="[^"]*/t/c/([^"]+)"', html)[0]
            assert services.tracker.click(click, user_agent=HUMAN_UA, ip="203.0.113.9", country="DE",
                                          now=later + timedelta(minutes=5))
    wait_until(lambda: services.reports.campaign_report(campaign_id).counts.clicks.human_unique == 2, timeout=30,
               what="clicks counted")
    return {"id": campaign_id, "name": resp.json()["name"], "sent": len(rows)}


@pytest.fixture(scope="module")
def logged_messages(api: TestClient, email_worker: Any) -> dict[str, Any]:
    """Three messages through the real worker, tagged, one with markup in its metadata; one bounces."""
    label = os.urandom(4).hex()
    tag = f"dash-{label}"
    to = f"success+dash{label}@simulator.amazonses.com"
    ids = []
    for order in range(2):
        resp = api.post("/v1/messages", json={"template": "password_reset", "to": to, "tags": [tag],
                                              "context": {"reset_url": "https://example.com/r",
                                                          "expires_in_minutes": 30},
                                              "metadata": {"note": f'<b>"{order}"</b>'}})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    bounced = api.post("/v1/messages", json={"template": "password_reset", "tags": [tag],
                                             "to": f"bounce+dash{label}@simulator.amazonses.com",
                                             "context": {"reset_url": "https://example.com/r",
                                                         "expires_in_minutes": 30}}).json()["id"]

    def timeline(message_id: str) -> list[str]:
        return [e["event"] for e in api.get(f"/v1/messages/{message_id}").json()["timeline"]]

    wait_until(lambda: all("sent" in timeline(m) for m in ids), timeout=30, what="messages sent")
    wait_until(lambda: "bounced" in timeline(bounced), timeout=30, what="bounce reported")
    return {"tag": tag, "to": to, "ids": ids, "bounced": bounced}


# ---- login, sessions, CSRF
def test_pages_without_a_session_redirect_to_the_login_form(browser: TestClient) -> None:
    # GIVEN no session cookie WHEN any page is asked for THEN it is a 303 to the login form, without data
    for path in [*PAGES, "/dashboard/campaigns/whatever", "/dashboard/nope"]:
        resp = browser.get(path)
        assert redirected_to_login(resp), path
        assert "<table" not in resp.text
    assert redirected_to_login(browser.post("/dashboard/dlq/1/replay", data={"csrf": "x"}))
    assert redirected_to_login(browser.post("/dashboard/sending/resume", data={"csrf": "x"}))


def test_login_sets_a_signed_cookie_with_the_key_id_and_strict_flags(browser: TestClient, services: Services,
                                                                     api_token: str) -> None:
    # WHEN an admin key is pasted into the login form
    resp = log_in(browser, api_token)
    # THEN the browser goes to the campaigns with a Secure, HttpOnly, SameSite=Strict cookie scoped to /dashboard
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/campaigns"
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}="))
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= set(flags)
    assert flags["samesite"].lower() == "samesite=strict" and flags["path"] == "Path=/dashboard"
    assert flags["max-age"] == f"Max-Age={SESSION_TTL_S}"
    # AND the cookie names the key but does not hold it
    value = browser.cookies.get(SESSION_COOKIE)
    assert value and api_token not in value and api_token.split("_", 2)[2] not in value
    session = Sessions(services.signer).read(value)
    assert session is not None and session.key_id == api_token.split("_")[1]
    assert browser.get("/dashboard/campaigns").status_code == 200


def test_a_bad_key_gets_a_401_page_and_no_session(browser: TestClient) -> None:
    # WHEN a key that does not exist (or is not a key at all) is pasted
    for bad in ["jm_aaaaaaaaaaaa_" + "x" * 43, "not a key", ""]:
        resp = log_in(browser, bad)
        # THEN the login page answers 401 with a message, and there is no session
        assert resp.status_code == 401 and "Invalid or revoked API key." in resp.text
        assert SESSION_COOKIE not in browser.cookies
    assert redirected_to_login(browser.get("/dashboard/campaigns"))


def test_a_send_only_key_is_refused(browser: TestClient, services: Services, unique: str) -> None:
    # GIVEN a key that may only send
    _, token = services.api_keys.create(f"send-{unique}", scopes=["send"])
    # WHEN it is used to log in THEN the dashboard refuses it
    resp = log_in(browser, token)
    assert resp.status_code == 403 and "lacks the admin scope" in resp.text
    assert SESSION_COOKIE not in browser.cookies


def test_revoking_the_key_ends_its_sessions(browser: TestClient, services: Services, unique: str) -> None:
    # GIVEN a session of an admin key
    key, token = services.api_keys.create(f"revoke-{unique}", scopes=["admin"])
    logged_in(browser, token)
    assert browser.get("/dashboard/suppressions").status_code == 200
    # WHEN the key is revoked
    assert services.api_keys.revoke(key.key_id)
    # THEN the very next page is a redirect to the login form, and the cookie is cleared
    resp = browser.get("/dashboard/suppressions")
    assert redirected_to_login(resp)
    assert any(c.startswith(f'{SESSION_COOKIE}="";') or c.startswith(f"{SESSION_COOKIE}=;")
               for c in resp.headers.get_list("set-cookie"))


def test_rotating_the_key_ends_its_sessions(browser: TestClient, services: Services, unique: str) -> None:
    # GIVEN a session of an admin key
    key, token = services.api_keys.create(f"rotate-{unique}", scopes=["admin"])
    logged_in(browser, token)
    assert browser.get("/dashboard/dlq").status_code == 200
    # WHEN the key gets a new secret (say, the old one leaked)
    _, new_token = services.api_keys.rotate(key.key_id)
    # THEN the session made with the old secret is over, and the new secret logs in
    assert redirected_to_login(browser.get("/dashboard/dlq"))
    assert logged_in(browser, new_token).get("/dashboard/dlq").status_code == 200


def test_tampered_forged_and_expired_cookies_are_refused(app: FastAPI, services: Services, api_token: str) -> None:
    key = services.api_keys.authenticate(api_token)
    assert key is not None
    good, _ = Sessions(services.signer).issue(key)
    body, sig = good.rsplit(".", 1)
    other_body = base64.urlsafe_b64encode(json.dumps({"csrf": "x", "exp": 2**40, "kid": "aaaaaaaaaaaa", "rot": ""},
                                                     separators=(",", ":")).encode()).decode().rstrip("=")
    expired, _ = Sessions(services.signer, clock=lambda: time.time() - SESSION_TTL_S - 5).issue(key)
    forged = [
        body + "." + ("A" if sig[0] != "A" else "B") + sig[1:],  # signature changed
        other_body + "." + sig,  # payload swapped
        services.signer.sign("open", {"kid": key.key_id, "csrf": "x", "exp": 2**40, "rot": ""}),  # another purpose
        expired,
        "garbage",
    ]
    for value in forged:
        # GIVEN a cookie that was not issued (or is no longer valid) WHEN a page is asked for THEN login it is
        with TestClient(app, base_url="https://testserver", follow_redirects=False,
                        cookies={SESSION_COOKIE: value}) as client:
            assert redirected_to_login(client.get("/dashboard/campaigns")), value
    with TestClient(app, base_url="https://testserver", follow_redirects=False,
                    cookies={SESSION_COOKIE: good}) as client:
        assert client.get("/dashboard/campaigns").status_code == 200  # the untouched one works


def test_login_and_state_changing_forms_need_their_csrf_token(browser: TestClient, api_token: str) -> None:
    # GIVEN the login form WHEN it is posted without its token, with another token, or from another origin
    form = browser.get("/dashboard/login")
    token = csrf_of(form.text)
    assert browser.post("/dashboard/login", data={"api_key": api_token}).status_code == 403
    other = TestClient(browser.app, base_url="https://testserver").get("/dashboard/login")
    assert browser.post("/dashboard/login", data={"api_key": api_token, "csrf": csrf_of(other.text)}).status_code == 403
    assert browser.post("/dashboard/login", data={"api_key": api_token, "csrf": token},
                        headers={"Origin": "https://evil.example"}).status_code == 403
    # THEN no session was made
    assert SESSION_COOKIE not in browser.cookies
    # GIVEN a session WHEN logout is posted without the token or cross-site THEN it is refused and the session stays
    page = logged_in(browser, api_token).get("/dashboard/campaigns")
    assert browser.post("/dashboard/logout").status_code == 403
    assert browser.post("/dashboard/logout", data={"csrf": "wrong"}).status_code == 403
    assert browser.post("/dashboard/logout", data={"csrf": csrf_of(page.text)},
                        headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert browser.get("/dashboard/campaigns").status_code == 200
    # WHEN logout is posted from the page THEN the session ends
    resp = browser.post("/dashboard/logout", data={"csrf": csrf_of(page.text)},
                        headers={"Origin": "https://testserver", "Sec-Fetch-Site": "same-origin"})
    assert redirected_to_login(resp)
    assert redirected_to_login(browser.get("/dashboard/campaigns"))


def test_same_origin_check() -> None:
    assert same_origin(origin=None, fetch_site=None, host="a.example")
    assert same_origin(origin="https://a.example", fetch_site="same-origin", host="a.example")
    assert not same_origin(origin="https://b.example", fetch_site=None, host="a.example")
    assert same_origin(origin="null", fetch_site="same-origin", host="a.example")  # what no-referrer makes
    assert not same_origin(origin="null", fetch_site="cross-site", host="a.example")
    assert not same_origin(origin=None, fetch_site="same-site", host="a.example")


def test_security_headers_on_every_dashboard_answer(browser: TestClient, api_token: str) -> None:
    # GIVEN answers of every kind: the form, a redirect, a page, the stylesheet, a 404, a bad query, a refusal
    answers = [browser.get("/dashboard/login"), browser.get("/dashboard/campaigns")]
    logged_in(browser, api_token)
    answers += [browser.get(p) for p in PAGES] + [browser.get("/dashboard/style.css"),
                                                  browser.get("/dashboard/no-such-page"),
                                                  browser.get("/dashboard/dlq", params={"replayed": "x"}),
                                                  browser.post("/dashboard/logout")]
    assert [a.status_code for a in answers[-4:]] == [200, 404, 422, 403]
    # THEN each carries the security headers
    for answer in answers:
        where = answer.request.url
        assert CSP <= {d.strip() for d in answer.headers.get("content-security-policy", "").split(";")}, where
        assert answer.headers.get("x-frame-options") == "DENY", where
        assert answer.headers.get("x-content-type-options") == "nosniff", where
        assert answer.headers.get("referrer-policy") == "no-referrer", where
        assert answer.headers.get("cache-control") == "no-store", where
    assert answers[-4].headers["content-type"].startswith("text/css")


def test_dashboard_routes_are_not_in_the_openapi_schema(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]


# ---- pages on real data
def test_campaign_list_and_report_show_the_campaign(browser: TestClient, api_token: str, services: Services,
                                                    report_campaign: dict[str, Any]) -> None:
    logged_in(browser, api_token)
    # WHEN the campaign list is opened
    listing = browser.get("/dashboard/campaigns")
    # THEN the campaign is there, its name escaped, with its progress and a link to its report
    assert listing.status_code == 200
    escaped = report_campaign["name"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        '"', "&#34;")
    assert escaped in listing.text and "<sale>" not in listing.text
    assert f"{report_campaign['sent']} / {report_campaign['sent']}" in listing.text
    assert f'href="/dashboard/campaigns/{report_campaign["id"]}"' in listing.text
    # WHEN its report is opened
    page = browser.get(f"/dashboard/campaigns/{report_campaign['id']}")
    report = services.reports.campaign_report(report_campaign["id"])
    assert page.status_code == 200 and escaped in page.text
    # THEN the charts are well-formed, labelled SVG: timeline, funnel and the A/B variants
    charts = {svg.get("id"): svg for svg in svgs_of(page.text)}
    assert set(charts) == {"timeline", "funnel", "variants"}
    for chart_id, svg in charts.items():
        assert svg.get("role") == "img" and svg.get("aria-labelledby") == f"{chart_id}-title {chart_id}-desc"
        assert svg.find(f"{SVG}title") is not None and svg.find(f"{SVG}desc") is not None
    bars = {r.get("data-value") for r in charts["funnel"].iter(f"{SVG}rect")}
    assert {str(report.counts.sent), str(report.counts.opens.human_unique), str(report.counts.clicks.human_unique)} \
        <= bars
    assert report.counts.sent == report_campaign["sent"] and report.counts.opens.human_unique == 4
    assert {line.get("data-series") for line in charts["timeline"].iter(f"{SVG}polyline")} == {
        "sends", "opens", "clicks"}
    # AND the numbers are in tables too: the funnel, countries, links, variants
    assert re.search(rf'<th scope="row">sent</th><td class="num">{report.counts.sent}</td>', page.text)
    assert re.search(r'<th scope="row">opened</th><td class="num">4</td>', page.text)
    assert re.search(r'<th scope="row">DE</th><td class="num">3</td>', page.text)
    assert "https://app.example.com/" in page.text or "https://docs.example.com/" in page.text
    assert report.ab is not None and len(report.ab.variants) == 2
    for variant in report.ab.variants:
        assert re.search(rf'<th scope="row">{variant.name}( \(leading\))?</th><td class="num">{variant.sent}</td>',
                         page.text)


def test_every_page_renders_for_an_empty_account(stack: StackState, services: Services, unique: str) -> None:
    # GIVEN an account with nothing in it yet (tables of its own) but an admin key
    settings = make_settings(stack, table_name=f"jetmail-empty-{unique}")
    Table(settings).create()
    Table(settings, name=settings.stats_table).create()
    empty = Services(settings)
    _, token = empty.api_keys.create("empty", scopes=["admin"])
    for content in load_template_dir(EXAMPLE_TEMPLATES_DIR):
        empty.templates.save(content)
    with TestClient(create_app(settings, services=empty), base_url="https://testserver",
                    follow_redirects=False) as client:
        logged_in(client, token)
        # WHEN every page is opened THEN each answers 200 and says there is nothing yet where it lists things
        for path in PAGES:
            resp = client.get(path, follow_redirects=True)
            assert resp.status_code == 200, (path, resp.text)
        assert "No campaigns yet" in client.get("/dashboard/campaigns").text
        # AND a campaign that has not sent anything has a report page with empty charts
        list_id = empty.contacts.create_list("nobody").id
        campaign = empty.campaigns.create(CampaignCreate(name="quiet", template="getting_started",
                                                         audience=[AudienceSource(list_id=list_id)]))
        page = client.get(f"/dashboard/campaigns/{campaign.id}")
        assert page.status_code == 200 and "quiet" in page.text
        assert len(svgs_of(page.text)) == 2  # timeline and funnel: no A/B test, no variant bars
    empty.queue.close()


def test_unknown_campaign_report_is_a_404_page(browser: TestClient, api_token: str) -> None:
    resp = logged_in(browser, api_token).get("/dashboard/campaigns/cmp_nope")
    assert resp.status_code == 404 and resp.headers["content-type"].startswith("text/html")


def test_suppression_page_lists_and_searches_escaped(browser: TestClient, api_token: str, services: Services,
                                                    unique: str) -> None:
    # GIVEN suppressions, one of them an address with markup in it, and one of another domain
    services.suppressions.add(f"a-{unique}@supp.example.com", reason="hard_bounce", source="test")
    services.suppressions.add(f"<script>x</script>{unique}@supp.example.com", reason="unsubscribed", source="test")
    services.suppressions.add(f"other-{unique}@elsewhere.example.com", reason="manual", source="test")
    logged_in(browser, api_token)
    # WHEN the list is opened THEN the newest are there, escaped
    listing = browser.get("/dashboard/suppressions")
    assert f"a-{unique}@supp.example.com" in listing.text
    assert "<script>x" not in listing.text and "&lt;script&gt;x&lt;/script&gt;" in listing.text
    # WHEN searching for part of an address THEN only the matches are shown, with reason and what they block
    found = browser.get("/dashboard/suppressions", params={"q": f"{unique}@supp"})
    assert found.status_code == 200
    assert f"a-{unique}@supp.example.com" in found.text and f"other-{unique}" not in found.text
    assert "2 match(es)" in found.text and "hard_bounce" in found.text and "marketing" in found.text
    # AND a full address is found directly
    exact = browser.get("/dashboard/suppressions", params={"q": f"OTHER-{unique}@elsewhere.example.com"})
    assert "1 match(es)" in exact.text and f"other-{unique}@elsewhere.example.com" in exact.text


def test_dead_letter_is_listed_and_replayed_through_the_page(browser: TestClient, api_token: str,
                                                             services: Services, email_worker: Any,
                                                             unique: str) -> None:
    # GIVEN a job that failed for good (the worker dead-letters it after its only attempt)
    ref = services.queue.enqueue("demo_fail", queue="email_maintenance", max_retries=0,
                                 reason=f"dashboard failure {unique}")

    def letters() -> list[Any]:
        return [d for d in services.queue.dlq_list(1000, queue="email_maintenance") if d.job_id == ref.job_id]

    wait_until(lambda: len(letters()) == 1, timeout=30, what="the dead letter")
    first = letters()[0]
    logged_in(browser, api_token)
    # WHEN the dead-letter page is opened THEN the job is listed with its error and a replay button
    page = browser.get("/dashboard/dlq")
    assert ref.job_id in page.text and f"dashboard failure {unique}" in page.text
    assert f'action="/dashboard/dlq/{first.seq}/replay"' in page.text
    # WHEN replay is posted without the CSRF token THEN nothing happens
    assert browser.post(f"/dashboard/dlq/{first.seq}/replay").status_code == 403
    assert services.queue.dlq_show(first.seq).job_id == ref.job_id
    # WHEN it is posted from the page
    resp = browser.post(f"/dashboard/dlq/{first.seq}/replay", data={"csrf": csrf_of(page.text)})
    assert resp.status_code == 303 and resp.headers["location"] == f"/dashboard/dlq?replayed={first.seq}"
    assert f"Dead letter {first.seq} was put back on its queue." in browser.get(resp.headers["location"]).text
    # THEN the dead letter is gone, and the worker ran the job again (it fails again, under a new sequence)
    with pytest.raises(NotFoundError):
        services.queue.dlq_show(first.seq)
    wait_until(lambda: any(d.seq != first.seq for d in letters()), timeout=30, what="the replayed job to run")
    # AND replaying a sequence that is no longer there is a 404 page
    gone = browser.post(f"/dashboard/dlq/{first.seq}/replay", data={"csrf": csrf_of(page.text)})
    assert gone.status_code == 404 and "no dead letter" in gone.text


def test_sending_page_shows_a_marketing_stop_and_resumes_it(browser: TestClient, api_token: str,
                                                            services: Services) -> None:
    # GIVEN a reputation stop of marketing sending
    stopped_at = datetime.now(UTC).isoformat()

    async def stop(q: Any) -> None:
        await write_state(q.js, {**await read_state(q.js), "marketing_stopped": stopped_at})

    services.queue.run(stop)
    logged_in(browser, api_token)
    # WHEN the sending page is opened THEN the stop, the reputation figures, limits and queues are shown
    page = browser.get("/dashboard/sending")
    assert page.status_code == 200
    assert "Marketing sending is stopped since" in page.text and stopped_at[:19].replace("T", " ") in page.text
    for text in ["Reputation, last 24 hours", "Bounce rate", "Warm-up", "email_campaign", "Resume marketing sending"]:
        assert text in page.text, text
    # WHEN resume is pressed
    resp = browser.post("/dashboard/sending/resume", data={"csrf": csrf_of(page.text)})
    assert resp.status_code == 303 and resp.headers["location"].startswith("/dashboard/sending?requeued=")
    # THEN the stop is cleared, and the page says so
    assert "marketing_stopped" not in services.queue.run(lambda q: read_state(q.js))
    after = browser.get(resp.headers["location"])
    assert "Marketing sending resumed" in after.text and "Marketing sending is stopped" not in after.text
    assert "Resume marketing sending" not in after.text
    # AND the audit log names the key behind the session as the one who resumed
    key_id = api_token.split("_")[1]
    resumed = services.audit.query(action="sending.resumed", actor=f"key:{key_id}", since=stopped_at).entries
    assert len(resumed) == 1


# ---- charts
def test_line_chart_maps_values_to_coordinates() -> None:
    # GIVEN two series over four hours, the largest value 10
    svg_text = line_chart(["00", "01", "02", "03"], [Series("sends", [0, 5, 10, 2.5]), Series("opens", [1, 1, 1, 1])],
                          chart_id="t", title="Sends <per> hour", desc="four hours & two series")
    svg = parse_svg(svg_text)
    # THEN it is labelled SVG, text escaped
    assert svg.find(f"{SVG}title").text == "Sends <per> hour"  # type: ignore[union-attr]
    assert svg.find(f"{SVG}desc").text == "four hours & two series"  # type: ignore[union-attr]
    box = Box(left=56, top=28, right=720 - 32, bottom=260 - 36)
    lines = {p.get("data-series"): p.get("points") for p in svg.iter(f"{SVG}polyline")}
    points = [tuple(float(v) for v in xy.split(",")) for xy in lines["sends"].split()]  # type: ignore[union-attr]
    # AND 0 sits on the bottom edge, the maximum (10, a nice ceiling) on the top, x spread evenly
    assert points[0] == (box.left, box.bottom)
    assert points[2] == (pytest.approx(box.left + 2 * box.width / 3, abs=0.1), box.top)
    assert points[1][1] == pytest.approx((box.top + box.bottom) / 2, abs=0.1)
    assert points[3] == (box.right, pytest.approx(box.bottom - box.height / 4, abs=0.1))
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert {"0", "2.5", "5", "7.5", "10", "00", "03", "sends", "opens"} <= set(labels)


def test_line_chart_edge_cases() -> None:
    empty = parse_svg(line_chart([], [], chart_id="e", title="t", desc="d"))
    assert [t.text for t in empty.iter(f"{SVG}text")] == ["no data yet"]
    one = parse_svg(line_chart(["10:00"], [Series("s", [3])], chart_id="o", title="t", desc="d"))
    assert len(list(one.iter(f"{SVG}circle"))) == 1  # a single hour still shows a mark
    many = parse_svg(line_chart([f"{h:02d}" for h in range(48)], [Series("s", [1] * 48)],
                                chart_id="m", title="t", desc="d"))
    hour_labels = [t.text for t in many.iter(f"{SVG}text") if t.get("y") == str(260 - 36 + 16)]
    assert 2 <= len(hour_labels) <= 8  # thinned so they do not overlap


def test_funnel_and_bars_are_proportional() -> None:
    funnel = parse_svg(funnel_chart([("sent", 200), ("delivered", 150), ("opened", 50), ("clicked", 0)],
                                    chart_id="f", title="Funnel", desc="d"))
    widths = [float(r.get("width") or 0) for r in funnel.iter(f"{SVG}rect")]
    assert widths[0] > 0 and widths[1] == pytest.approx(widths[0] * 0.75) and widths[2] == pytest.approx(widths[0] / 4)
    assert widths[3] == 0
    assert "150 (75.0%)" in [t.text for t in funnel.iter(f"{SVG}text")]
    nothing = parse_svg(funnel_chart([("sent", 0)], chart_id="n", title="t", desc="d"))
    assert [t.text for t in nothing.iter(f"{SVG}text")] == ["nothing sent yet"]
    bars = parse_svg(bar_chart(["A", "B<"], [Series("open rate", [0.4, 0.2]), Series("click", [0.1, 0.0])],
                               chart_id="b", title="t", desc="d", top_value=0.5, fmt=lambda v: f"{v:.0%}"))
    rects = [r for r in bars.iter(f"{SVG}rect") if "bar" in (r.get("class") or "")]
    assert [r.get("data-value") for r in rects] == ["0.4", "0.1", "0.2", "0.0"]
    lengths = [float(r.get("width") or 0) for r in rects]
    assert lengths[0] == pytest.approx(lengths[2] * 2) and lengths[1] == pytest.approx(lengths[0] / 4)
    texts = [t.text for t in bars.iter(f"{SVG}text")]
    assert "B<" in texts and "40%" in texts


def test_scale_helpers() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 3, 7, 10, 11, 240, 2600)] == [1, 0.4, 1, 4, 8, 10, 20, 400, 4000]
    box = Box(left=10, top=0, right=110, bottom=100)
    assert y_of(0, top_value=50, box=box) == 100 and y_of(50, top_value=50, box=box) == 0
    assert x_of(0, count=1, box=box) == 60 and x_of(4, count=5, box=box) == 110


def test_timeline_hours_are_filled_in() -> None:
    points = [TimelinePoint(hour="2026-11-28T08:00:00Z", sent=5), TimelinePoint(hour="2026-11-28T11:00:00Z", opens=2)]
    filled = hourly(points)
    assert [p.hour[11:13] for p in filled] == ["08", "09", "10", "11"]
    assert [p.sent for p in filled] == [5, 0, 0, 0] and filled[-1].opens == 2


# ---- a real browser
class Chromium:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (DevTools messages, NUL-separated, on fds 3/4)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()

        def wire() -> None:  # in the child: the pipe ends must be fds 3 (commands) and 4 (answers)
            a = fcntl.fcntl(to_child, fcntl.F_DUPFD, 100)
            b = fcntl.fcntl(from_child, fcntl.F_DUPFD, 100)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-pipe",
             "--window-size=1280,900", f"--user-data-dir={profile}"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(raw))

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._next(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))
            self.events.append(answer)

    def wait_event(self, method: str, *, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._next(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        os.close(self._to)
        os.close(self._from)
        stop_process(self.proc.pid)


class Tab:
    def __init__(self, browser: Chromium) -> None:
        self.browser = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session)

    def load(self, action: Any) -> None:
        """Run ``action`` (a navigation or a form submission) and wait for the next page to load."""
        self.browser.events.clear()
        action()
        self.browser.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")


@pytest.fixture(scope="module")
def served(app_env: dict[str, str], services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API (and so the dashboard) under uvicorn on a free port, as `jetmail dev up` serves it."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "jetmail.api.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port)], env=app_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(http_ready(f"http://127.0.0.1:{port}/health"), timeout=60, what="uvicorn", proc=proc, log=log)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc.pid)


def test_headless_chromium_logs_in_through_the_form_and_screenshots_a_report(
        served: str, api_token: str, report_campaign: dict[str, Any], tmp_path: Path, repo_root: Path) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`; `make setup` installs it "
                    "when it runs as root with apt-get)")
    chromium = Chromium(binary, tmp_path / "profile")
    try:
        tab = Tab(chromium)
        # GIVEN the login form in a real browser
        tab.load(lambda: tab.call("Page.navigate", {"url": f"{served}/dashboard/campaigns"}))
        assert tab.eval("location.pathname") == "/dashboard/login"  # no session: sent to the form
        # WHEN the admin key is typed into it and the form is submitted
        tab.load(lambda: tab.eval(f"document.getElementById('api_key').value = {json.dumps(api_token)}; "
                                  "document.querySelector('form.login').submit(); true"))
        # THEN the browser is on the campaigns page, with an HttpOnly session cookie it cannot read
        assert tab.eval("location.pathname") == "/dashboard/campaigns", tab.eval("document.documentElement.outerHTML")
        assert tab.eval("document.cookie") == ""
        assert report_campaign["id"] in tab.eval("document.body.innerHTML")
        # AND the stylesheet loaded under the Content-Security-Policy
        assert tab.eval("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
        # WHEN the campaign's report is opened
        tab.load(lambda: tab.call("Page.navigate", {"url": f"{served}/dashboard/campaigns/{report_campaign['id']}"}))
        assert tab.eval("document.querySelectorAll('svg.chart').length") == 3
        assert tab.eval("document.querySelector('#funnel rect').getBoundingClientRect().width") > 0
        png = base64.b64decode(tab.call("Page.captureScreenshot", {"format": "png"})["data"])
    finally:
        chromium.close()
    # THEN the screenshot is a real 1280x900 PNG with something drawn on it
    shot = tmp_path / "dashboard.png"
    shot.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 900)
    assert len(png) > 30_000
    if os.environ.get("JETMAIL_UPDATE_SCREENSHOT"):  # refresh the README's picture: docs/dashboard.png
        (repo_root / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, repo_root / "docs" / "dashboard.png")


# ---- the message log
def test_the_messages_page_searches_with_a_plain_form(browser: TestClient, api_token: str,
                                                       logged_messages: dict[str, Any]) -> None:
    logged_in(browser, api_token)
    # WHEN the search form is sent (a GET of query parameters) with a tag, then a tag and a status
    page = browser.get("/dashboard/messages", params={"tag": logged_messages["tag"], "status": ""})
    # THEN the tag's messages are listed, newest first, each linking to its page
    assert page.status_code == 200, page.text
    found = re.findall(r'href="/dashboard/messages/(msg_[0-9a-f]+)"', page.text)
    assert found == [logged_messages["bounced"], *reversed(logged_messages["ids"])]
    assert 'name="tag" type="search" value="' + logged_messages["tag"] + '"' in page.text
    bounced = browser.get("/dashboard/messages", params={"tag": logged_messages["tag"], "status": "bounced"})
    assert re.findall(r'href="/dashboard/messages/(msg_[0-9a-f]+)"', bounced.text) == [logged_messages["bounced"]]
    # AND a recipient's search pages with a link that keeps the filters
    by_to = browser.get("/dashboard/messages", params={"to": logged_messages["to"], "since": "2020-01-01"})
    assert len(re.findall(r'href="/dashboard/messages/msg_', by_to.text)) == 2
    # AND bad filters answer a 422 page that keeps the form
    for params in [{"status": "lost"}, {"since": "yesterday"}, {"tag": "a b"}, {"cursor": "garbage"},
                   {"campaign_id": "cmp_x", "tag": "x"}]:
        bad = browser.get("/dashboard/messages", params=params)
        assert bad.status_code == 422, (params, bad.text)
        assert 'role="alert"' in bad.text and 'role="search"' in bad.text


def test_the_message_page_shows_the_timeline_escaped(browser: TestClient, api_token: str,
                                                      logged_messages: dict[str, Any]) -> None:
    logged_in(browser, api_token)
    page = browser.get(f"/dashboard/messages/{logged_messages['ids'][0]}")
    assert page.status_code == 200, page.text
    events = re.findall(r'<li class="event-([a-z_]+)">', page.text)
    assert events[:3] == ["queued", "sending", "sent"]
    assert "&lt;b&gt;&#34;0&#34;&lt;/b&gt;" in page.text and '<b>"0"</b>' not in page.text
    bounce = browser.get(f"/dashboard/messages/{logged_messages['bounced']}")
    assert "event-bounced" in bounce.text
    assert browser.get("/dashboard/messages/msg_0000").status_code == 404
    assert browser.get("/dashboard/messages/cm_nope_r1_0_0").status_code == 404


def test_headless_chromium_searches_the_message_log_and_opens_a_timeline(
        served: str, api_token: str, logged_messages: dict[str, Any], tmp_path: Path) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`)")
    chromium = Chromium(binary, tmp_path / "profile")
    try:
        tab = Tab(chromium)
        tab.load(lambda: tab.call("Page.navigate", {"url": f"{served}/dashboard/messages"}))
        tab.load(lambda: tab.eval(f"document.getElementById('api_key').value = {json.dumps(api_token)}; "
                                  "document.querySelector('form.login').submit(); true"))
        # GIVEN the messages page, reached through the navigation
        tab.load(lambda: tab.eval("document.querySelector('nav a[href$=\"/messages\"]').click(); true"))
        assert tab.eval("location.pathname") == "/dashboard/messages"
        # WHEN a tag and a status are chosen in the form and it is submitted, no script of the page's own
        tab.load(lambda: tab.eval(
            f"document.querySelector('input[name=tag]').value = {json.dumps(logged_messages['tag'])}; "
            "document.querySelector('select[name=status]').value = 'bounced'; "
            "document.querySelector('form.search').submit(); true"))
        # THEN the address bar carries the filters and the bounced message is the one listed
        assert f"tag={logged_messages['tag']}" in tab.eval("location.search")
        links = tab.eval("[...document.querySelectorAll('table.messages a')].map(a => a.textContent)")
        assert links == [logged_messages["bounced"]]
        # WHEN it is opened THEN its timeline runs from queued to bounced
        tab.load(lambda: tab.eval("document.querySelector('table.messages a').click(); true"))
        events = tab.eval("[...document.querySelectorAll('ol.timeline li strong')].map(s => s.textContent)")
        assert events[0] == "queued" and "sent" in events and "bounced" in events
        assert tab.eval("document.querySelector('ol.timeline').getBoundingClientRect().height") > 0
    finally:
        chromium.close()
