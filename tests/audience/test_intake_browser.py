"""A subscriber's whole path in a real headless Chromium: the embeddable form on a web page of its own, the
confirmation mail at the SMTP sink, the confirmation page's button, then a campaign mail's preference centre
used with the keyboard, and the list's archive. With ``JETMAIL_SCREENSHOTS=docs/guide/images`` it saves the
guides' pictures of those pages."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import free_port, http_ready, stop_process, wait_until
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import ReceiverServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reporting"))
from test_dashboard import Chromium, Tab  # the dashboard tests' DevTools driver

HTML = ('<p>Hello {{ recipient.name or "reader" }}, here is what is new this month.</p>'
        '<p><a href="{{ view_in_browser_url }}">View in your browser</a></p>'
        '<p><a href="{{ preferences_url }}">Email preferences</a> · <a href="{{ unsubscribe_url }}">Unsubscribe</a>'
        ' · {{ company.address }}</p>')
KEYS = {"Tab": ("Tab", 9), " ": ("Space", 32)}


@pytest.fixture(scope="module")
def served(app_env: dict[str, str], services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API under uvicorn on a free port, its public pages and links on that port (as `jetmail dev up`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "jetmail.api.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port)],
                                env={**app_env, "JETMAIL_PUBLIC_BASE_URL": url}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(http_ready(f"{url}/health"), timeout=60, what="uvicorn", proc=proc, log=log)
    yield url
    stop_process(proc.pid)


@pytest.fixture
def web_page() -> Iterator[dict[str, str]]:
    """A web page of someone's own site, served on another port: its HTML is whatever the test puts in it."""
    content = {"html": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = content["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ReceiverServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    content["url"] = f"http://127.0.0.1:{server.server_address[1]}/signup"
    yield content
    server.shutdown()
    server.server_close()


def press(tab: Tab, key: str) -> None:
    code, number = KEYS[key]
    for kind in ("keyDown", "keyUp"):
        tab.call("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                            "windowsVirtualKeyCode": number, "nativeVirtualKeyCode": number})


def tab_to(tab: Tab, selector: str, *, limit: int = 100) -> None:
    """Press Tab until the element ``selector`` names has the focus."""
    for _ in range(limit):
        press(tab, "Tab")
        if tab.eval(f"document.activeElement === document.querySelector({selector!r})"):
            return
    raise AssertionError(f"{selector} never got the focus by Tab")


def path_of(link: str) -> str:
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def test_headless_chromium_subscribes_confirms_and_changes_preferences_by_keyboard(
        served: str, web_page: dict[str, str], services: Services, mailbox: Mailbox, api_token: str,
        email_worker: subprocess.Popen[bytes], unique: str, tmp_path: Path, repo_root: Path) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`)")
    shots = os.environ.get("JETMAIL_SCREENSHOTS")
    with TestClient(create_app(services.settings, services=services),
                    headers={"Authorization": f"Bearer {api_token}"}) as api:
        # GIVEN a public double opt-in list with a form field, a second public list, and the first one's form
        # snippet (from the API under uvicorn) on a page of a website
        news = api.post("/v1/lists", json={
            "name": f"news-{unique}", "public": True, "title": "Product news", "form_fields": ["company"],
            "description": "What is new in the product, once a month."}).json()
        events = api.post("/v1/lists", json={"name": f"events-{unique}", "public": True, "opt_in": "single",
                                             "title": "Events", "description": "Meetups and webinars near you."}
                          ).json()
        asked = urllib.request.Request(f"{served}/v1/lists/{news['id']}/form",  # noqa: S310 - our own server
                                       headers={"Authorization": f"Bearer {api_token}"})
        with urllib.request.urlopen(asked, timeout=10) as answer:  # noqa: S310
            snippet = answer.read().decode()
        assert f'action="{served}/subscribe/{news["public_id"]}"' in snippet
        web_page["html"] = ("<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign up</title><style>"
                            "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}"
                            "form p{display:flex;flex-direction:column;gap:.2rem}input,button{font:inherit}"
                            "input{padding:.4rem}button{align-self:flex-start;padding:.4rem 1.2rem}"
                            "</style></head><body>" + snippet + "</body></html>")
        address = f"reader-{unique}@intake.example.com"
        chromium = Chromium(binary, tmp_path / "profile")
        pictures: dict[str, bytes] = {}
        try:
            tab = Tab(chromium)
            tab.call("Emulation.setDeviceMetricsOverride",
                     {"width": 960, "height": 900, "deviceScaleFactor": 1, "mobile": False})

            def picture(name: str) -> None:
                # the page's content only, not the empty window below it
                height = min(900, int(tab.eval("document.body.getBoundingClientRect().bottom")) + 48)
                shot = tab.call("Page.captureScreenshot", {"format": "png", "clip": {
                    "x": 0, "y": 0, "width": 960, "height": height, "scale": 1}})
                pictures[name] = base64.b64decode(shot["data"])

            tab.load(lambda: tab.call("Page.navigate", {"url": web_page["url"]}))
            tab.eval(f"document.querySelector('input[name=email]').value = {address!r}; "
                     "document.querySelector('input[name=name]').value = 'Rea Der'; "
                     "document.querySelector('input[name=company]').value = 'ACME'; true")
            picture("subscribe-form")
            # WHEN the form is submitted
            tab.load(lambda: tab.eval("document.querySelector('form.jetmail-subscribe button').click(); true"))
            # THEN the browser is on the API's "check your inbox" page and the contact is pending
            assert tab.eval("location.href") == f"{served}/subscribe/{news['public_id']}"
            assert tab.eval("document.querySelector('h1').textContent") == "Check your inbox"
            assert api.get(f"/v1/contacts/{address}").json()["lists"] == {news["id"]: "pending"}
            # WHEN the confirmation mail's link is opened
            wait_until(lambda: mailbox.for_recipient(address), timeout=30, what="the confirmation mail")
            text = mailbox.message(mailbox.for_recipient(address)[0].id).get_body(preferencelist=("plain",))
            assert text is not None
            link = re.search(r"https?://\S+/confirm/[A-Za-z0-9_.-]+", text.get_content())
            assert link is not None and link.group(0).startswith(served), text.get_content()
            tab.load(lambda: tab.call("Page.navigate", {"url": link.group(0)}))
            # THEN it asks for the button and nothing changed yet
            assert tab.eval("document.querySelector('button').textContent") == "Confirm subscription"
            assert api.get(f"/v1/contacts/{address}").json()["lists"] == {news["id"]: "pending"}
            picture("confirm-subscription")
            # WHEN the button is pressed THEN the contact is subscribed, with its consent record
            tab.load(lambda: tab.eval("document.querySelector('button').click(); true"))
            assert tab.eval("document.querySelector('h1').textContent") == "You are subscribed"
            contact = api.get(f"/v1/contacts/{address}").json()
            assert contact["lists"] == {news["id"]: "subscribed"} and contact["attributes"] == {"company": "ACME"}
            consent = contact["consent"][news["id"]]
            assert consent["source"] == "form" and consent["opt_in"] == "double"
            assert consent["source_url"].startswith(web_page["url"].rsplit("/", 1)[0])
            assert consent["ip"].startswith("sha256:") and consent["confirmed_at"] >= consent["requested_at"]

            # GIVEN an archived campaign to the list, received at the sink
            template = f"intake-browser-{unique}"
            assert api.post("/v1/templates", json={"name": template, "locale": "en", "subject": "News for May",
                                                   "html": HTML, "category": "marketing"}).status_code == 201
            campaign = api.post("/v1/campaigns", json={"name": f"May {unique}", "template": template,
                                                       "archive": True, "audience": [{"list_id": news["id"]}]})
            assert campaign.status_code == 201, campaign.text
            campaign_id = campaign.json()["id"]
            assert api.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

            def received() -> list[str]:
                tick(services)
                found = [html_of(mailbox.message(e.id)) for e in mailbox.for_recipient(address)]
                return [h for h in found if "/p/" in h]

            wait_until(received, timeout=60, what="the campaign mail")
            preferences = re.search(r'href="([^"]+/p/[^"]+)"', received()[0])
            assert preferences is not None
            # WHEN its preferences link is opened, the other list's box reached with Tab, ticked with Space,
            # and the form saved with Space on its button
            tab.load(lambda: tab.call("Page.navigate", {"url": served + path_of(preferences.group(1))}))
            box = f"input[name=list][value={events['public_id']}]"
            assert tab.eval(f"document.querySelector('input[name=list][value={news['public_id']}]').checked")
            assert tab.eval(f"document.querySelector({box!r}).checked") is False
            tab_to(tab, box)
            press(tab, " ")
            assert tab.eval(f"document.querySelector({box!r}).checked") is True
            picture("preference-centre")
            tab_to(tab, "button[value=save]")
            tab.load(lambda: press(tab, " "))
            # THEN the preferences are saved: the contact is in both lists
            assert tab.eval("document.querySelector('h1').textContent") == "Preferences saved"
            lists = api.get(f"/v1/contacts/{address}").json()["lists"]
            assert lists == {news["id"]: "subscribed", events["id"]: "subscribed"}
            # WHEN the list's archive is opened THEN it lists the campaign
            wait_until(lambda: api.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent", timeout=30,
                       what="the campaign marked sent")
            tab.load(lambda: tab.call("Page.navigate", {"url": f"{served}/archive/{news['public_id']}"}))
            assert f"/archive/{news['public_id']}/{campaign_id}" in tab.eval("document.body.innerHTML")
            assert "News for May" in tab.eval("document.body.textContent")
            picture("archive")
        finally:
            chromium.close()
    for name, png in pictures.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        if shots:
            folder = Path(shots) if Path(shots).is_absolute() else repo_root / shots
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.png").write_bytes(png)
