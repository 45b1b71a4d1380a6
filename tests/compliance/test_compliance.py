"""Bulk-sender rules (unsubscribe link, postal address, List-Unsubscribe) and the From allow-list."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import StackState, wait_until
from jetmail.messaging.compose import Composer, SenderNotAllowed
from jetmail.messaging.templating import (
    EXAMPLE_TEMPLATES_DIR,
    InMemoryTemplates,
    Renderer,
    TemplateVersion,
    load_template_dir,
)
from jetmail.services import Services
from stacktools import api_client, make_settings

WELCOME_CONTEXT = {"login_url": "https://app.example.com/login"}
RESET = {"reset_url": "https://example.com/r", "expires_in_minutes": 30}
UNSUBSCRIBE = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
ADDRESS = "<p>{{ company.name }} · {{ company.address }}</p>"


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token, follow_redirects=False)


def template(client: TestClient, name: str, locale: str, html: str, category: str = "marketing") -> None:
    resp = client.post("/v1/templates", json={"name": name, "locale": locale, "subject": "News", "html": html,
                                              "category": category})
    assert resp.status_code == 201, resp.text


def campaign(client: TestClient, unique: str, **body: Any) -> Any:
    list_id = client.post("/v1/lists", json={"name": f"compliance-{unique}"}).json()["id"]
    return client.post("/v1/campaigns", json={"name": "news", "audience": [{"list_id": list_id}], **body})


def test_campaign_without_postal_address_in_one_locale_is_refused(client: TestClient, unique: str) -> None:
    # GIVEN a marketing template whose English version complies and whose German one lacks the address
    name = f"news-{unique}"
    template(client, name, "en", f"<p>Hello</p>{UNSUBSCRIBE}{ADDRESS}")
    template(client, name, "de", f"<p>Hallo</p>{UNSUBSCRIBE}")
    created = campaign(client, unique, template=name)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    # WHEN it is sent or scheduled
    for resp in (client.post(f"/v1/campaigns/{cid}/send"),
                 client.post(f"/v1/campaigns/{cid}/schedule", json={"at": "2030-01-01T09:00:00Z"})):
        # THEN 422 names the template, the locale and what it lacks
        assert resp.status_code == 422, resp.text
        [problem] = resp.json()["errors"]
        assert (problem["template"], problem["locale"]) == (name, "de")
        assert problem["missing"] == ["postal address ({{ company.address }})"]
    # and the campaign is still a draft
    assert client.get(f"/v1/campaigns/{cid}").json()["state"] == "draft"

    # WHEN the German version is fixed THEN the campaign is accepted
    template(client, name, "de", f"<p>Hallo</p>{UNSUBSCRIBE}{ADDRESS}")
    assert client.post(f"/v1/campaigns/{cid}/schedule", json={"at": "2030-01-01T09:00:00Z"}).status_code == 200
    assert client.post(f"/v1/campaigns/{cid}/cancel").status_code == 200


def test_campaign_with_a_template_without_unsubscribe_link_is_refused(client: TestClient, unique: str) -> None:
    # GIVEN a campaign whose template is transactional (no unsubscribe link, no address)
    created = campaign(client, unique, template="password_reset", context=RESET)
    assert created.status_code == 201, created.text
    # WHEN it is sent THEN 422 for each locale, naming the unsubscribe link
    resp = client.post(f"/v1/campaigns/{created.json()['id']}/send")
    assert resp.status_code == 422, resp.text
    problems = resp.json()["errors"]
    assert sorted((p["template"], p["locale"]) for p in problems) == [("password_reset", "de"),
                                                                       ("password_reset", "en")]
    assert all("unsubscribe link ({{ unsubscribe_url }})" in p["missing"] for p in problems)


def test_every_ab_variant_template_is_checked(client: TestClient, unique: str) -> None:
    # GIVEN an A/B test whose variant B uses a template without the postal address
    bare = f"bare-{unique}"
    template(client, bare, "en", f"<p>B</p>{UNSUBSCRIBE}")
    created = campaign(client, unique, template="welcome", context=WELCOME_CONTEXT,
                       ab_test={"test_percentage": 20, "variants": [{"name": "a"}, {"name": "b", "template": bare}]})
    assert created.status_code == 201, created.text
    # WHEN it is sent THEN only the variant's template is named
    resp = client.post(f"/v1/campaigns/{created.json()['id']}/send")
    assert resp.status_code == 422, resp.text
    assert [(p["template"], p["locale"]) for p in resp.json()["errors"]] == [(bare, "en")]


def test_a_campaign_whose_context_lacks_a_variable_is_refused_and_attributes_may_vary(client: TestClient,
                                                                                      unique: str) -> None:
    # GIVEN a campaign on welcome without the login_url its template prints (its sample_context has one)
    bare = campaign(client, unique, template="welcome")
    assert bare.status_code == 201, bare.text
    cid = bare.json()["id"]
    # WHEN it is sent or scheduled THEN 422 names each locale and the variable, and it stays a draft
    for resp in (client.post(f"/v1/campaigns/{cid}/send"),
                 client.post(f"/v1/campaigns/{cid}/schedule", json={"at": "2030-01-01T09:00:00Z"})):
        assert resp.status_code == 422, resp.text
        assert sorted(p["locale"] for p in resp.json()["errors"]) == ["de", "en"]
        assert all("'login_url' is undefined" in p["message"] for p in resp.json()["errors"])
    assert client.get(f"/v1/campaigns/{cid}").json()["state"] == "draft"
    # AND a template that prints a contact attribute is checked without one contact's attributes
    name = f"attrs-{unique}"
    template(client, name, "en", f"<p>Hi {{{{ attributes.first_name }}}}, {{{{ offer }}}}</p>{UNSUBSCRIBE}{ADDRESS}")
    refused = client.post(f"/v1/campaigns/{campaign(client, unique, template=name).json()['id']}/send")
    assert refused.status_code == 422 and "'offer' is undefined" in refused.text
    # AND so is a subject the campaign, or one of its A/B variants, sets instead of the template's
    variant = {"test_percentage": 20, "variants": [{"name": "a"}, {"name": "b", "subject": "{{ headline }}"}]}
    tested = campaign(client, unique, template=name, context={"offer": "x"}, ab_test=variant).json()["id"]
    refused = client.post(f"/v1/campaigns/{tested}/send")
    assert refused.status_code == 422 and "subject" in refused.text and "'headline' is undefined" in refused.text
    sent = client.post(f"/v1/campaigns/{campaign(client, unique, template=name, context={'offer': 'x'}).json()['id']}"
                       "/send")
    assert sent.status_code == 200, sent.text


def test_marketing_template_sent_as_a_message_must_comply_too(client: TestClient, unique: str) -> None:
    # GIVEN a marketing template without the postal address
    name = f"promo-{unique}"
    template(client, name, "en", f"<p>Sale</p>{UNSUBSCRIBE}")
    # WHEN it is sent through the messages API THEN 422 names it
    resp = client.post("/v1/messages", json={"template": name, "to": f"promo-{unique}@example.com"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == f"{name}/en"
    # and a transactional template needs neither
    ok = client.post("/v1/messages", json={"template": "password_reset", "to": f"tx-{unique}@example.com",
                                           "context": RESET})
    assert ok.status_code == 202, ok.text


def test_marketing_mail_carries_list_unsubscribe_and_transactional_does_not(client: TestClient, mailbox: Mailbox,
                                                                            services: Services, unique: str) -> None:
    # GIVEN a marketing and a transactional message sent through the messages API
    news, reset = f"news-{unique}@example.com", f"reset-{unique}@example.com"
    assert client.post("/v1/messages", json={"template": "welcome", "to": news,
                                              "context": WELCOME_CONTEXT}).status_code == 202
    assert client.post("/v1/messages", json={"template": "password_reset", "to": reset,
                                              "context": RESET}).status_code == 202
    wait_until(lambda: mailbox.for_recipient(news) and mailbox.for_recipient(reset), timeout=15, what="both emails")
    marketing = mailbox.message(mailbox.for_recipient(news)[0].id)
    transactional = mailbox.message(mailbox.for_recipient(reset)[0].id)
    # THEN the marketing one has RFC 8058 one-click headers and the postal address in its body
    assert str(marketing["List-Unsubscribe"]).startswith(f"<{services.settings.public_base_url}/u/")
    assert marketing["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = marketing.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert services.settings.company_address in html
    # and the transactional one has none
    assert transactional["List-Unsubscribe"] is None


def test_from_address_must_be_an_allowed_identity(client: TestClient, mailbox: Mailbox, unique: str) -> None:
    # WHEN a message asks for a From outside the allowed identities THEN 422 says so
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": f"f-{unique}@example.com",
                                             "context": RESET, "from": "Shop <shop@evil.test>"})
    assert resp.status_code == 422, resp.text
    assert "not a verified sender" in resp.json()["detail"]
    # and a campaign with that From is refused when created
    refused = campaign(client, unique, template="welcome", context=WELCOME_CONTEXT, **{"from": "x@evil.test"})
    assert refused.status_code == 422, refused.text
    # WHEN the From is at the default address's domain THEN it is sent from that address
    to = f"billing-{unique}@example.com"
    ok = client.post("/v1/messages", json={"template": "password_reset", "to": to, "context": RESET,
                                           "from": "Billing <billing@example.com>"})
    assert ok.status_code == 202, ok.text
    wait_until(lambda: mailbox.for_recipient(to), timeout=15, what="the billing email")
    assert "billing@example.com" in str(mailbox.message(mailbox.for_recipient(to)[0].id)["From"])


def test_allow_list_takes_addresses_and_domains(stack: StackState) -> None:
    # GIVEN JETMAIL_ALLOWED_FROM with one address and one domain
    composer = Composer(make_settings(stack, allowed_from="billing@shop.test, news.shop.test"))
    # THEN exactly those are allowed (the default From's domain is no longer implied)
    composer.check_from("Billing <Billing@shop.test>")
    composer.check_from("anyone@news.shop.test")
    for refused in ("sales@shop.test", "noreply@example.com", "x@sub.news.shop.test"):
        with pytest.raises(SenderNotAllowed):
            composer.check_from(refused)


def test_example_marketing_templates_comply(stack: StackState) -> None:
    examples = load_template_dir(EXAMPLE_TEMPLATES_DIR)
    settings = make_settings(stack)
    composer = Composer(settings, renderer=Renderer(limits=settings.render_limits,
                                                    layouts=InMemoryTemplates(examples).layout))
    versions = [TemplateVersion(**c.model_dump(), version=1) for c in examples]
    marketing = [v for v in versions if v.category == "marketing"]
    assert len(marketing) >= 6
    assert [str(p) for v in marketing for p in composer.compliance_problems(v)] == []
