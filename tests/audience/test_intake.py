"""Public lists, the subscribe endpoint, double opt-in and the consent record, on the real stack: the API in
process, a real worker sending to the SMTP sink."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.api.app import create_app
from jetmail.api.intake import intake_for
from jetmail.audience.intake import expire_unconfirmed
from jetmail.audience.model import Consent, ContactFields, ContactNotFound
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.scheduler import tick
from jetmail.services import Services

CAMPAIGN_CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
                    "docs_url": "https://docs.example.com/"}
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")


@pytest.fixture(scope="module")
def app(services: Services) -> Any:
    return create_app(services.settings, services=services)


@pytest.fixture(scope="module")
def admin(app: Any, api_token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {api_token}"}) as c:
        yield c


@pytest.fixture(scope="module")
def public(app: Any) -> Iterator[TestClient]:
    """A browser: no API key."""
    with TestClient(app) as c:
        yield c


def public_list(admin: TestClient, name: str, **settings: Any) -> dict[str, Any]:
    resp = admin.post("/v1/lists", json={"name": name, "public": True, **settings})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def client_ip(unique: str, n: int = 0) -> str:
    """A client address of the test's own, so per-address limits of other tests never interfere."""
    value = int(unique[:6], 16)
    return f"10.{value >> 16 & 255}.{value >> 8 & 255}.{(value + n) & 255}"


def confirm_link(services: Services, mailbox: Mailbox, address: str) -> tuple[str, str]:
    """(subject, link) of the confirmation mail sent to ``address``."""
    wait_until(lambda: mailbox.for_recipient(address), timeout=30, what=f"confirmation mail to {address}")
    entry = mailbox.for_recipient(address)[0]
    message = mailbox.message(entry.id)
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    link = CONFIRM_LINK.search(text.get_content())
    assert link is not None, text.get_content()
    base = services.settings.public_base_url.rstrip("/")
    return str(message["Subject"]), link.group(0).removeprefix(base)


def test_form_subscribe_then_confirm_by_post_with_a_consent_record(
        admin: TestClient, public: TestClient, services: Services, mailbox: Mailbox, email_worker: Any,
        unique: str) -> None:
    # GIVEN a public double opt-in list whose form may set "company", and one member already subscribed
    made = public_list(admin, f"news-{unique}", title="Product news", form_fields=["company"])
    assert made["opt_in"] == "double" and made["public_id"].startswith("pub_")
    assert made["public_id"] != made["id"]
    member = f"member-{unique}@example.com"
    assert admin.put(f"/v1/contacts/{member}", json={"lists": {made["id"]: "subscribed"}}).status_code == 201
    address = f"Reader-{unique}@Example.com"
    # WHEN a German browser posts the form, with a field the list does not allow
    resp = public.post(f"/subscribe/{made['public_id']}", data={
        "email": address, "name": "Rea Der", "company": "ACME", "role": "admin", "website": ""},
        headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5", "Referer": "https://shop.example.com/signup",
                 "X-Forwarded-For": client_ip(unique)})
    # THEN it gets a German "check your inbox" page, and the contact is pending with its consent record
    assert resp.status_code == 200, resp.text
    assert "text/html" in resp.headers["content-type"] and "folge dem Link in der E-Mail" in resp.text
    contact = admin.get(f"/v1/contacts/{address}").json()
    assert contact["lists"] == {made["id"]: "pending"}
    assert contact["attributes"] == {"company": "ACME"} and contact["name"] == "Rea Der"
    consent = contact["consent"][made["id"]]
    assert consent["source"] == "form" and consent["source_url"] == "https://shop.example.com/signup"
    assert consent["ip"].startswith("sha256:") and client_ip(unique) not in str(contact)
    assert consent["opt_in"] == "double" and consent.get("confirmed_at") is None
    # and a German confirmation mail arrives through the transactional pipeline
    subject, link = confirm_link(services, mailbox, address.lower())
    assert subject == "Bitte bestätige deine Anmeldung zu Product news"

    # WHEN a campaign goes to the list before the confirmation
    campaign = admin.post("/v1/campaigns", json={"name": f"c-{unique}", "template": "getting_started",
                                                 "context": CAMPAIGN_CONTEXT, "audience": [{"list_id": made["id"]}]})
    assert campaign.status_code == 201, campaign.text
    campaign_id = campaign.json()["id"]
    assert admin.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

    def sent() -> bool:
        tick(services)
        return bool(admin.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(sent, timeout=60, what="campaign sent")
    # THEN the subscribed member got it and the pending contact did not
    assert len(mailbox.for_recipient(member)) == 1
    assert len(mailbox.for_recipient(address.lower())) == 1  # the confirmation only

    # WHEN the link is fetched (a link scanner does that) THEN the page offers a button and nothing changes
    page = public.get(link, headers={"Accept-Language": "de"})
    assert page.status_code == 200 and "<form method=post>" in page.text and "bestätigen" in page.text
    assert admin.get(f"/v1/contacts/{address}").json()["lists"] == {made["id"]: "pending"}
    # WHEN the button is pressed, twice
    done = public.post(link)
    again = public.post(link)
    # THEN the contact is subscribed, both answers say so, and the consent record has the confirmation time
    assert done.status_code == again.status_code == 200
    assert done.text == again.text and "You are subscribed" in done.text
    contact = admin.get(f"/v1/contacts/{address}").json()
    assert contact["lists"] == {made["id"]: "subscribed"}
    confirmed = contact["consent"][made["id"]]
    assert confirmed["confirmed_at"] >= confirmed["requested_at"] == consent["requested_at"]
    # and the consent is in the GDPR export and the audit trail (which names the address by its pseudonym)
    export = admin.get(f"/v1/contacts/{address}/export").json()
    assert [(c["list_id"], c["list_name"], c["source"]) for c in export["consents"]] == [
        (made["id"], made["name"], "form")]
    pseudonym = services.pseudonyms.pseudonym(address.lower())
    actions = {e["action"] for e in admin.get("/v1/audit", params={"target": pseudonym}).json()["data"]}
    assert {"subscription.requested", "subscription.confirmed"} <= actions
    # and a forged or tampered link confirms nothing
    assert public.post(link[:-3] + "abc").status_code == 404
    assert public.get("/confirm/nonsense").status_code == 404


def test_answers_never_tell_who_is_subscribed_and_the_honeypot_stores_nothing(
        admin: TestClient, public: TestClient, services: Services, unique: str) -> None:
    # GIVEN a public single opt-in list, a private list and an address already subscribed
    made = public_list(admin, f"single-{unique}", opt_in="single")
    private = admin.post("/v1/lists", json={"name": f"private-{unique}"}).json()
    headers = {"X-Forwarded-For": client_ip(unique)}
    url = f"/subscribe/{made['public_id']}"
    first = public.post(url, json={"email": f"one-{unique}@example.com", "source": "https://example.com/a"},
                        headers=headers)
    # WHEN the same address subscribes again, a new one subscribes, and a bot fills the honeypot
    repeat = public.post(url, json={"email": f"one-{unique}@example.com"}, headers=headers)
    other = public.post(url, json={"email": f"two-{unique}@example.com"}, headers=headers)
    bot = public.post(url, json={"email": f"bot-{unique}@example.com", "website": "http://spam"}, headers=headers)
    # THEN every answer is the same
    answers = {(r.status_code, r.text) for r in (first, repeat, other, bot)}
    assert answers == {(202, first.text)}, answers
    # and the single opt-in list subscribed at once, with consent, while the bot left nothing behind
    contact = services.contacts.get(f"one-{unique}@example.com")
    assert contact.lists == {made["id"]: "subscribed"}
    consent = contact.consent[made["id"]]
    assert consent.opt_in == "single" and consent.confirmed_at == consent.requested_at
    with pytest.raises(ContactNotFound):
        services.contacts.get(f"bot-{unique}@example.com")
    # and a private list, an unknown id and a bad address are refused
    assert public.post(f"/subscribe/{private['public_id']}", json={"email": f"x-{unique}@example.com"},
                       headers=headers).status_code == 404
    assert public.post("/subscribe/pub_AAAAAAAAAAAAAAAAAAAAAA", data={"email": "a@example.com"},
                       headers=headers).status_code == 404
    bad = public.post(url, data={"email": "not an address"}, headers=headers)
    assert bad.status_code == 422 and "text/html" in bad.headers["content-type"]
    # and the list's form snippet posts to the endpoint with the honeypot; a private list has none
    snippet = admin.get(f"/v1/lists/{made['id']}/form")
    assert snippet.status_code == 200 and f'/subscribe/{made["public_id"]}"' in snippet.text
    assert 'name="website"' in snippet.text and 'name="email"' in snippet.text
    assert admin.get(f"/v1/lists/{private['id']}/form").status_code == 422
    # and the list's settings are checked: a form field may not shadow the form's own fields
    bad = admin.patch(f"/v1/lists/{made['id']}", json={"form_fields": ["email"]})
    assert bad.status_code == 422 and "taken by the form" in bad.text
    changed = admin.patch(f"/v1/lists/{made['id']}", json={"public": False})
    assert changed.status_code == 200 and changed.json()["public_id"] == made["public_id"]
    assert public.post(url, json={"email": f"late-{unique}@example.com"}, headers=headers).status_code == 404


def test_rate_limits_per_client_and_per_address_hold(public: TestClient, admin: TestClient, services: Services,
                                                     unique: str) -> None:
    made = public_list(admin, f"limits-{unique}")
    url = f"/subscribe/{made['public_id']}"
    settings = services.settings
    # honeypot posts: counted like any request, but nothing is stored or mailed
    per_address = [public.post(url, json={"email": f"same-{unique}@example.com", "website": "x"},
                               headers={"X-Forwarded-For": client_ip(unique, n)}).status_code
                   for n in range(2 * settings.subscribe_rate_per_address + 1)]
    # a window is a wall-clock minute: within twice the limit plus one, a refusal must come
    assert per_address[0] == 202 and 429 in per_address, per_address
    per_ip = [public.post(url, data={"email": f"ip{n}-{unique}@example.com", "website": "x"},
                          headers={"X-Forwarded-For": client_ip(unique, 100)}) for n in
              range(2 * settings.subscribe_rate_per_ip + 1)]
    codes = [r.status_code for r in per_ip]
    assert codes[0] == 200 and 429 in codes, codes
    refused = per_ip[codes.index(429)]
    assert int(refused.headers["Retry-After"]) >= 1 and "text/html" in refused.headers["content-type"]


def test_import_never_resubscribes_and_a_returning_subscriber_must_confirm(
        admin: TestClient, public: TestClient, services: Services, unique: str) -> None:
    # GIVEN a single opt-in public list and a member who unsubscribed from it
    made = public_list(admin, f"return-{unique}", opt_in="single")
    address = f"gone-{unique}@example.com"
    headers = {"X-Forwarded-For": client_ip(unique)}
    assert public.post(f"/subscribe/{made['public_id']}", json={"email": address}, headers=headers).status_code == 202
    assert admin.put(f"/v1/contacts/{address}", json={"lists": {made["id"]: "unsubscribed"}}).status_code == 200
    # WHEN an import lists the member as subscribed
    report = admin.post(f"/v1/lists/{made['id']}/import", content=f"email\n{address}\n".encode())
    # THEN the member stays unsubscribed
    assert report.status_code == 200 and report.json()["kept_unsubscribed"] == 1
    assert services.contacts.get(address).lists == {made["id"]: "unsubscribed"}
    # WHEN the member subscribes again through the (single opt-in) form
    assert public.post(f"/subscribe/{made['public_id']}", json={"email": address}, headers=headers).status_code == 202
    # THEN it waits for a fresh confirmation
    contact = services.contacts.get(address)
    assert contact.lists == {made["id"]: "pending"} and contact.consent[made["id"]].opt_in == "double"


def test_unconfirmed_subscriptions_expire_and_their_link_stops_working(
        admin: TestClient, public: TestClient, services: Services, unique: str) -> None:
    # GIVEN a new contact pending in a double opt-in list and an existing contact pending in it too
    made = public_list(admin, f"expire-{unique}")
    mailing_list = services.contacts.get_list(made["id"])
    kept = f"kept-{unique}@example.com"
    other = admin.post("/v1/lists", json={"name": f"other-{unique}"}).json()
    admin.put(f"/v1/contacts/{kept}", json={"lists": {other["id"]: "subscribed"}})
    requested = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    for address in (f"new-{unique}@example.com", kept):
        outcome, _ = services.contacts.subscribe(address, mailing_list=mailing_list, fields=ContactFields(),
                                                 consent=Consent(source="form", requested_at=requested))
        assert outcome == "pending"
    intake_token = intake_for(public.app).confirm_token(f"new-{unique}@example.com", made["id"], requested)
    # WHEN the expiry passes (the scheduler tick runs the same function with JETMAIL_PENDING_EXPIRY_DAYS)
    expired = expire_unconfirmed(services.contacts, before=datetime.now(UTC) - timedelta(days=7), audit=services.audit,
                                 pseudonym=services.pseudonyms.pseudonym)
    # THEN the contact the request made is gone, the other keeps its other list, and the link confirms nothing
    assert expired >= 2
    with pytest.raises(ContactNotFound):
        services.contacts.get(f"new-{unique}@example.com")
    assert services.contacts.get(kept).lists == {other["id"]: "subscribed"}
    assert made["id"] not in services.contacts.get(kept).consent
    assert public.post(f"/confirm/{intake_token}").status_code == 404


def test_cli_makes_a_public_list_and_prints_its_form(app_env: dict[str, str], services: Services,
                                                     unique: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jetmail.cli", *args], env=app_env, capture_output=True,
                              text=True, timeout=60, check=False)

    made = cli("lists", "create", f"cli-{unique}", "--public", "--opt-in", "single", "--field", "company")
    assert made.returncode == 0, made.stderr
    list_id = made.stdout.strip().splitlines()[-1]
    stored = services.contacts.get_list(list_id)
    assert stored.public and stored.opt_in == "single" and stored.form_fields == ["company"]
    form = cli("lists", "form", list_id)
    assert form.returncode == 0, form.stderr
    assert f"/subscribe/{stored.public_id}" in form.stdout and 'name="company"' in form.stdout


def test_proof_of_work_and_kept_ip_addresses(services: Services) -> None:
    from jetmail.audience.intake import ProofOfWork, kept_ip

    # GIVEN the built-in proof of work at 8 bits, and a nonce found the way the form's script finds it
    now = 1_800_000_000.0
    check = ProofOfWork(8, clock=lambda: now)
    minute = int(now // 60)
    nonce = next(n for n in range(100_000) if hashlib.sha256(
        f"pub_x:ada@example.com:{minute}:{n}".encode()).digest()[0] == 0)
    # THEN it passes for its list and address only, and not once it is older than ten minutes
    assert check.verify("pub_x", "ada@example.com", {"pow": f"{minute}:{nonce}"})
    assert not check.verify("pub_x", "eve@example.com", {"pow": f"{minute}:{nonce}"})
    assert not check.verify("pub_x", "ada@example.com", {"pow": f"{minute - 11}:{nonce}"})
    assert not check.verify("pub_x", "ada@example.com", {})
    assert 'name="pow"' in check.form_html("pub_x")
    # and the consent record keeps an address hashed, truncated or whole, as configured
    signer = services.signer
    assert kept_ip("203.0.113.77", "truncate", signer=signer) == "203.0.113.0"
    assert kept_ip("2001:db8:1:2::7", "truncate", signer=signer) == "2001:db8:1::"
    assert kept_ip("203.0.113.77", "full", signer=signer) == "203.0.113.77"
    hashed = kept_ip("203.0.113.77", "hash", signer=signer)
    assert hashed is not None and hashed.startswith("sha256:") and "203" not in hashed
    assert kept_ip("not an ip", "hash", signer=signer) is None


def test_a_missing_confirmation_template_is_installed_from_the_shipped_one(
        admin: TestClient, public: TestClient, services: Services, mailbox: Mailbox, email_worker: Any,
        unique: str) -> None:
    # GIVEN a stack whose templates were never synced: no confirm_subscription template
    from jetmail.audience.intake import CONFIRM_TEMPLATE

    services.templates.delete(CONFIRM_TEMPLATE)
    assert services.templates.head(CONFIRM_TEMPLATE, "en", cached=False) is None
    made = public_list(admin, f"unsynced-{unique}")
    address = f"unsynced-{unique}@example.com"
    # WHEN someone subscribes through the form
    resp = public.post(f"/subscribe/{made['public_id']}", data={"email": address},
                       headers={"X-Forwarded-For": client_ip(unique, 7)})
    # THEN the answer is the usual page, the shipped template is saved, and the confirmation mail goes out
    assert resp.status_code == 200, resp.text
    assert services.templates.head(CONFIRM_TEMPLATE, "en", cached=False) is not None
    _, link = confirm_link(services, mailbox, address)
    assert link.startswith("/confirm/")
