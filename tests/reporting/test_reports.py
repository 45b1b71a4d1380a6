"""Campaign reports and account statistics end to end: a campaign sent by the real worker, opens and
clicks through the public tracking routes, SES notifications through the intake, then the report
through the API (JSON and CSV), /v1/stats and the CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jetmail.campaigns.ids import campaign_message_id
from jetmail.campaigns.service import z_test
from jetmail.deliverability.feedback import record_sends
from jetmail.deliverability.useragents import APPLE_PRIVACY, country_code, mail_client
from jetmail.devstack.mailbox import Mailbox
from jetmail.devstack.stack import wait_until
from jetmail.reporting.reports import Counts, Engagement, rates_from
from jetmail.scheduler import tick
from jetmail.services import Services
from stacktools import api_client

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = {"steps": [{"title": "One", "description": "First."}], "dashboard_url": "https://app.example.com/",
           "docs_url": "https://docs.example.com/"}
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
IPHONE_MAIL = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) " \
              "Mobile/15E148"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.5.0"
SES_MESSAGE_ID = "0100019ac5e7d1a4-3f6b2c1e-7a8d-4e5f-9b0c-1d2e3f4a5b6c-000000"


@pytest.fixture(scope="module")
def client(services: Services, email_worker: subprocess.Popen[bytes], api_token: str) -> Iterator[TestClient]:
    yield from api_client(services, api_token, follow_redirects=False)


def ses_notification(sample: str, *, message_id: str, recipient: str, n: int) -> str:
    """A sample SES event (events/) re-addressed to one campaign message, in the current hour."""
    text = (ROOT / "events" / sample).read_text()
    message = json.loads(text)["Records"][0]["Sns"]["Message"]
    return str(message.replace("msg_example", message_id).replace("ada@example.com", recipient)
               .replace(SES_MESSAGE_ID, f"{SES_MESSAGE_ID[:-6]}{n:06d}")
               .replace("2025-11-28T12:", datetime.now(UTC).strftime("%Y-%m-%dT%H:")))


def tracking_links(mailbox: Mailbox, to: str) -> tuple[list[str], str]:
    entry = mailbox.for_recipient(to)[0]
    msg = message_from_bytes(mailbox.raw(entry.id), policy=policy.default)
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    return re.findall(r'href="[^"]*(/t/c/[^"]+)"', html), re.findall(r'src="[^"]*(/t/o/[^"]+)"', html)[0]


def report_cost(services: Services, campaign_id: str) -> int:
    before = services.table.requests + services.stats_table.requests
    services.reports.campaign_report(campaign_id)
    return services.table.requests + services.stats_table.requests - before


@pytest.fixture(scope="module")
def sent_campaign(client: TestClient, services: Services, mailbox: Mailbox) -> dict[str, Any]:
    """Five contacts mailed by a campaign, then opens, clicks, deliveries, a bounce and a complaint."""
    tag = datetime.now(UTC).strftime("%H%M%S%f")
    people = [f"r{i}-{tag}@reports.example.com" for i in range(5)]
    before = client.get("/v1/stats", params={"granularity": "hour"}).json()["counts"]
    list_id = client.post("/v1/lists", json={"name": f"reports-{tag}"}).json()["id"]
    body = "\n".join(json.dumps({"email": p}) for p in people).encode()
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body).status_code == 200
    created = client.post("/v1/campaigns", json={"name": "November news", "template": "getting_started",
                                                 "context": CONTEXT, "audience": [{"list_id": list_id}]})
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    assert client.post(f"/v1/campaigns/{campaign_id}/send").status_code == 200

    def finished() -> bool:
        tick(services)
        return bool(client.get(f"/v1/campaigns/{campaign_id}").json()["state"] == "sent")

    wait_until(finished, timeout=60, what="campaign sent")
    wait_until(lambda: all(mailbox.for_recipient(p) for p in people), timeout=15, what="mail in the sink")
    links = {p: tracking_links(mailbox, p) for p in people}
    # a reader's open a minute after the proxy's fetch, kept in this hour: the account test reads hours up to now
    now = datetime.now(UTC)
    later = min(now + timedelta(minutes=1), now.replace(minute=59, second=59, microsecond=999_999))

    def open_(person: str, agent: str, *, country: str | None = None, ip: str = "203.0.113.9") -> None:
        headers = {"User-Agent": agent, "X-Forwarded-For": ip, **({"CloudFront-Viewer-Country": country}
                                                                     if country else {})}
        assert client.get(links[person][1], headers=headers).status_code == 200

    def click(person: str, index: int, agent: str, *, country: str) -> None:
        resp = client.get(links[person][0][index], headers={"User-Agent": agent, "CloudFront-Viewer-Country": country,
                                                            "X-Forwarded-For": "198.51.100.4"})
        assert resp.status_code == 302

    # person 0 reads on desktop Chrome in Germany twice and clicks the first link twice
    open_(people[0], CHROME, country="DE")
    open_(people[0], CHROME, country="DE")
    click(people[0], 0, CHROME, country="DE")
    click(people[0], 0, CHROME, country="de")
    # person 1 uses Apple Mail with Privacy Protection (its proxy fetches first), then reads and clicks
    open_(people[1], "Mozilla/5.0", country="US", ip="17.58.1.2")
    assert services.tracker.open(links[people[1]][1].rsplit("/", 1)[1], user_agent=IPHONE_MAIL, ip="198.51.100.8",
                                 country="US", now=later)
    click(people[1], 0, IPHONE_MAIL, country="US")
    # person 2 reads in Gmail (Google's image proxy, no country header)
    open_(people[2], GMAIL_PROXY)
    # SES: four deliveries, one hard bounce, one complaint (each notification sent twice: counted once)
    feedback = [("ses_event_delivery.json", p) for p in people[:4]] + [
        ("ses_event_bounce_permanent.json", people[4]), ("ses_event_complaint.json", people[3])]
    for n, (sample, person) in enumerate(feedback):
        message_id = next(i for i in _messages_of(services, campaign_id) if i[1] == person)[0]
        notification = ses_notification(sample, message_id=message_id, recipient=person, n=n)
        assert services.ses_events.process(notification)["applied"] == 1
        assert services.ses_events.process(notification)["duplicate"] == 1
    return {"id": campaign_id, "people": people, "links": links, "before": before}


def _messages_of(services: Services, campaign_id: str) -> list[tuple[str, str, str | None]]:
    """(message id, recipient, variant) of every campaign message, from its planned batches."""
    out = []
    for batch in services.table.query_all(pk=f"CAMPAIGN#{campaign_id}", sk_prefix="BATCH#"):
        _, run, number = batch["sk"].split("#")
        out += [(campaign_message_id(campaign_id, run, int(number), pos), email, batch.get("variant"))
                for pos, email in enumerate(batch["recipients"])]
    return out


def test_campaign_report_has_the_exact_figures(client: TestClient, sent_campaign: dict[str, Any]) -> None:
    # GIVEN the campaign above; WHEN its report is read
    resp = client.get(f"/v1/campaigns/{sent_campaign['id']}/report")
    assert resp.status_code == 200, resp.text
    report = resp.json()
    # THEN counts, human and machine engagement, and every rate are exact
    assert report["name"] == "November news" and report["state"] == "sent"
    assert report["progress"] == {"total": 5, "queued": 0, "sent": 5, "failed": 0, "skipped": 0}
    c = report["counts"]
    assert (c["sent"], c["failed"], c["delivered"], c["bounced_hard"], c["bounced_soft"], c["complained"],
            c["unsubscribed"]) == (5, 0, 4, 1, 0, 1, 0)
    assert c["opens"] == {"total": 5, "human_total": 4, "machine_total": 1, "unique": 3, "human_unique": 3}
    assert c["clicks"] == {"total": 3, "human_total": 3, "machine_total": 0, "unique": 2, "human_unique": 2}
    assert report["rates"].pop("engagement_base") == "delivered"
    assert report["rates"] == pytest.approx({"delivery": 0.8, "open": 0.75, "click": 0.5, "click_to_open": 2 / 3,
                                             "bounce": 0.2, "complaint": 0.25, "unsubscribe": 0.0,
                                             "open_all": 0.75, "click_all": 0.5})
    # the timeline adds up to the totals (the hours depend on the clock)
    timeline = report["timeline"]
    assert timeline and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", p["hour"]) for p in timeline)
    assert [sum(p[k] for p in timeline) for k in ("sent", "delivered", "opens", "clicks", "bounced", "complained")] \
        == [5, 4, 3, 2, 1, 1]
    # links, countries and mail clients
    assert [(x["index"], x["url"], x["clicks"], x["human_clicks"]) for x in report["links"]] == \
        [(0, "https://app.example.com/", 3, 3)]
    countries = {x["key"]: (x["opens"], x["human_opens"], x["clicks"], x["human_clicks"]) for x in report["countries"]}
    assert countries == {"DE": (1, 1, 1, 1), "US": (1, 1, 1, 1), "unknown": (1, 1, 0, 0)}
    devices = {x["key"]: (x["opens"], x["human_opens"], x["clicks"], x["human_clicks"]) for x in report["devices"]}
    assert devices == {"Chrome": (1, 1, 1, 1), APPLE_PRIVACY: (1, 0, 0, 0), "Apple Mail (iOS)": (0, 1, 1, 1),
                       "Gmail": (1, 1, 0, 0)}
    assert report["ab"] is None


def test_report_as_csv(client: TestClient, sent_campaign: dict[str, Any]) -> None:
    # WHEN the report is asked for as CSV
    resp = client.get(f"/v1/campaigns/{sent_campaign['id']}/report", params={"format": "csv"})
    # THEN it is a CSV attachment named after the campaign with one figure a row
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert f'filename="{sent_campaign["id"]}-report.csv"' in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["section", "key", "metric", "value"]
    figures = {(s, k, m): v for s, k, m, v in rows[1:]}
    assert figures[("counts", "", "sent")] == "5" and figures[("counts", "", "bounced")] == "1"
    assert figures[("counts", "", "opens_human_unique")] == "3"
    assert figures[("rates", "", "open")] == "0.75" and figures[("rates", "", "delivery")] == "0.8"
    assert figures[("link", "0", "url")] == "https://app.example.com/"
    assert figures[("country", "DE", "clicks")] == "1"


def test_account_stats_count_the_campaign(client: TestClient, sent_campaign: dict[str, Any]) -> None:
    # WHEN the account statistics of the last hours are read (nothing else sends in this module meanwhile)
    now = datetime.now(UTC)
    resp = client.get("/v1/stats", params={"granularity": "hour", "start": (now - timedelta(hours=2)).isoformat(),
                                           "end": now.strftime("%Y-%m-%dT%H")})
    assert resp.status_code == 200, resp.text
    stats = resp.json()
    # THEN every hour of the range is there and the campaign's sends and events are in it
    assert stats["granularity"] == "hour" and len(stats["points"]) == 3
    assert stats["end"] == now.strftime("%Y-%m-%dT%H")
    after, before = stats["counts"], sent_campaign["before"]
    assert after["sent"] - before["sent"] == 5
    assert after["delivered"] - before["delivered"] == 4
    assert after["bounced_hard"] - before["bounced_hard"] == 1
    assert after["opens"]["human_unique"] - before["opens"]["human_unique"] == 3
    assert sum(p["sent"] for p in stats["points"]) == after["sent"]
    # and by day: today holds at least the campaign
    daily = client.get("/v1/stats").json()
    assert len(daily["points"]) == 30 and daily["points"][-1]["period"] == now.date().isoformat()
    assert daily["points"][-1]["sent"] >= 5


def test_cli_prints_the_report(app_env: dict[str, str], sent_campaign: dict[str, Any]) -> None:
    # WHEN an operator runs `jetmail campaign report ID` (and --json)
    run = subprocess.run([sys.executable, "-m", "jetmail.cli", "campaign", "report", sent_campaign["id"]],
                         env=app_env, capture_output=True, text=True, timeout=60)
    # THEN a readable table shows counts, rates and the top link
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{sent_campaign['id']}  November news  (sent)")
    assert re.search(r"^delivered\s+4\s+80\.0%\s+of sent$", run.stdout, re.MULTILINE)
    assert re.search(r"^opened\s+3\s+75\.0%\s+of delivered", run.stdout, re.MULTILINE)
    assert re.search(r"^click-to-open\s+66\.7%$", run.stdout, re.MULTILINE)
    assert re.search(r"^\s+0\s+3\s+3\s+https://app\.example\.com/$", run.stdout, re.MULTILINE)
    as_json = subprocess.run([sys.executable, "-m", "jetmail.cli", "campaign", "report", sent_campaign["id"],
                              "--json"], env=app_env, capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["counts"]["delivered"] == 4


def test_report_cost_does_not_grow_with_events(client: TestClient, services: Services,
                                              sent_campaign: dict[str, Any]) -> None:
    # GIVEN the report's cost with the events so far
    campaign_id = sent_campaign["id"]
    first = report_cost(services, campaign_id)
    # WHEN 45 more opens arrive (several people, clients and countries)
    later = datetime.now(UTC) + timedelta(minutes=2)
    agents = [CHROME, OUTLOOK, THUNDERBIRD, IPHONE_MAIL, GMAIL_PROXY]
    for n in range(45):
        person = sent_campaign["people"][n % 5]
        token = sent_campaign["links"][person][1].rsplit("/", 1)[1]
        assert services.tracker.open(token, user_agent=agents[n % 5], ip=f"198.51.100.{n}",
                                     country=["FR", "JP", "BR"][n % 3], now=later + timedelta(seconds=n))
    # THEN the report costs the same number of DynamoDB requests (two: the campaign and its counters)
    assert report_cost(services, campaign_id) == first == 2
    assert services.reports.campaign_report(campaign_id).counts.opens.total == 50


def test_sends_are_counted_once_per_key(services: Services) -> None:
    # GIVEN a batch's sends recorded; WHEN the same batch is recorded again (a redelivered job)
    key = f"test-{datetime.now(UTC).timestamp()}"
    at = datetime(2024, 2, 3, 4, 5, tzinfo=UTC)
    assert record_sends(services.stats_table, key, sent=7, failed=2, at=at)
    assert not record_sends(services.stats_table, key, sent=7, failed=2, at=at)
    # THEN it counts once
    day = services.reports.account_stats(start="2024-02-03", end="2024-02-03").points[0]
    assert (day.sent, day.failed) >= (7, 2)
    hour = services.stats_table.get("STATS", "HOUR#2024-02-03T04")
    assert hour is not None and hour["sent"] % 7 == 0 and hour["sent"] == day.sent


def test_counters_read_back_what_a_campaign_send_counted(services: Services) -> None:
    # GIVEN a campaign batch's sends counted for its variant, in an hour nothing else counts in
    campaign_id = f"cmp_counters{datetime.now(UTC).timestamp():.0f}"
    at = datetime(2023, 5, 6, 7, 8, tzinfo=UTC)
    counters = services.counters
    assert counters.record_sends(f"{campaign_id}#r#1", sent=3, failed=1, campaign_id=campaign_id, variant="a", at=at)
    # THEN the campaign's totals, its hour and its variant hold them
    assert (counters.campaign_totals(campaign_id)["sent"], counters.campaign_totals(campaign_id)["failed"]) == (3, 1)
    rows = counters.campaign(campaign_id)
    assert [(hour, row["sent"]) for hour, row in rows.hours] == [("2023-05-06T07", 3)]
    assert rows.variants["a"]["failed"] == 1 and counters.variants(campaign_id) == rows.variants
    # AND the account's hours after the one before, up to it, hold them too
    hours = counters.account("hour", after="2023-05-06T06", until="2023-05-06T07")
    assert list(hours) == ["2023-05-06T07"] and hours["2023-05-06T07"]["sent"] >= 3
    assert "2023-05-06" in counters.account("day", after="2023-05-05")


def test_rates_are_per_accepted_message_while_the_provider_reports_no_deliveries() -> None:
    # GIVEN counts as the SMTP provider leaves them: sends, bounces and engagement, but no delivery events
    smtp = Counts(sent=10, bounced_hard=2, complained=1, unsubscribed=1,
                  opens=Engagement(total=9, unique=5, human_unique=4), clicks=Engagement(total=3, unique=2,
                                                                                       human_unique=2))
    # THEN opens, clicks, complaints and unsubscribes are over the 8 accepted messages, and say so
    rates = rates_from(smtp)
    assert rates.engagement_base == "accepted"
    assert (rates.delivery, rates.open, rates.click, rates.complaint, rates.unsubscribe, rates.open_all) == \
        (0.0, 0.5, 0.25, 0.125, 0.125, 0.625)
    # AND once deliveries are reported, they are the base again
    ses = rates_from(smtp.model_copy(update={"delivered": 5}))
    assert ses.engagement_base == "delivered" and (ses.open, ses.click) == (0.8, 0.4)
    # AND nothing sent is no rate at all
    assert rates_from(Counts()).open is None


def test_mail_clients_and_countries() -> None:
    assert mail_client("Mozilla/5.0", "198.51.100.1") == APPLE_PRIVACY
    assert mail_client(CHROME, "17.1.2.3") == APPLE_PRIVACY
    assert mail_client(GMAIL_PROXY) == "Gmail"
    assert mail_client("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html") == "Yahoo Mail"
    assert mail_client(OUTLOOK) == "Outlook"
    assert mail_client(THUNDERBIRD) == "Thunderbird"
    assert mail_client(IPHONE_MAIL) == "Apple Mail (iOS)"
    assert mail_client("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)") \
        == "Apple Mail"
    assert mail_client(CHROME) == "Chrome"
    assert mail_client(None) == "unknown" and mail_client("something odd/1") == "other"
    assert [country_code(c) for c in ("de", "US", None, "", "XX", "Germany")] == \
        ["DE", "US", "unknown", "unknown", "unknown", "unknown"]


def test_bad_input_gets_clear_errors(client: TestClient, app_env: dict[str, str]) -> None:
    # unknown campaign: 404, and one CLI error line
    assert client.get("/v1/campaigns/cmp_nope/report").status_code == 404
    run = subprocess.run([sys.executable, "-m", "jetmail.cli", "campaign", "report", "cmp_nope"], env=app_env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.strip() == "error: campaign 'cmp_nope' not found"
    # bad ranges and granularities: 422 naming the problem
    for params, words in ((({"start": "2026-02-01", "end": "2026-01-01"}), "is after end"),
                          ({"start": "yesterday"}, "not a date"),
                          ({"start": "2020-01-01", "end": "2026-01-01"}, "at most 400"),
                          ({"granularity": "hour", "start": "2026-01-01", "end": "2026-03-01"}, "at most 744"),
                          ({"granularity": "week"}, "")):
        resp = client.get("/v1/stats", params=params)
        assert resp.status_code == 422, (params, resp.text)
        assert words in resp.text
    assert client.get("/v1/campaigns/x/report", params={"format": "pdf"}).status_code == 422
    # no key: 401
    bare = TestClient(client.app)
    assert bare.get("/v1/stats").status_code == 401
    assert bare.get("/v1/campaigns/cmp_nope/report").status_code == 401


def test_ab_variants_in_the_report(client: TestClient, services: Services, mailbox: Mailbox) -> None:
    # GIVEN an A/B test over 40 contacts (all in the test) where B's readers open and only two of A's do
    tag = datetime.now(UTC).strftime("%H%M%S%f")
    people = [f"v{i}-{tag}@variants.example.com" for i in range(40)]
    list_id = client.post("/v1/lists", json={"name": f"variants-{tag}"}).json()["id"]
    body = "\n".join(json.dumps({"email": p}) for p in people).encode()
    assert client.post(f"/v1/lists/{list_id}/import", params={"format": "jsonl"}, content=body).status_code == 200
    created = client.post("/v1/campaigns", json={
        "name": "Subject test", "template": "getting_started", "context": CONTEXT, "audience": [{"list_id": list_id}],
        "ab_test": {"variants": [{"name": "A", "subject": "A subject"}, {"name": "B", "subject": "B subject"}],
                    "test_percentage": 100, "test_duration": 3600, "fallback": "manual", "seed": 3}})
    campaign_id = created.json()["id"]
    client.post(f"/v1/campaigns/{campaign_id}/send")
    wait_until(lambda: all(mailbox.for_recipient(p) for p in people), timeout=60, what="test sends")
    wait_until(lambda: sum(v.sent for v in services.reports.campaign_report(campaign_id).ab.variants)  # type: ignore[union-attr]
               == 40, timeout=30, what="variant send counters")
    variant_of = {email: variant for _, email, variant in _messages_of(services, campaign_id)}
    later = datetime.now(UTC) + timedelta(minutes=1)
    a_readers = [p for p in people if variant_of[p] == "A"][:2]
    for person in [p for p in people if variant_of[p] == "B"] + a_readers:
        pixel = tracking_links(mailbox, person)[1]
        assert services.tracker.open(pixel.rsplit("/", 1)[1], user_agent=CHROME, ip="198.51.100.7", country="NL",
                                     now=later)
    # WHEN the report is read
    ab = client.get(f"/v1/campaigns/{campaign_id}/report").json()["ab"]
    # THEN each variant has its sends, opens and rates, and B leads with the service's z-test p-value
    a, b = ab["variants"]
    sent_a, sent_b = list(variant_of.values()).count("A"), list(variant_of.values()).count("B")
    assert (a["name"], a["sent"], a["opened"], b["name"], b["sent"], b["opened"]) == \
        ("A", sent_a, 2, "B", sent_b, sent_b)
    assert a["open_rate"] == pytest.approx(2 / sent_a) and b["open_rate"] == 1.0
    assert b["leading"] and not a["leading"] and b["p_value"] is None
    assert a["p_value"] == pytest.approx(z_test(sent_b, sent_b, 2, sent_a)) == ab["p_value"]
    assert ab["metric"] == "open_rate" and ab["state"] == "testing" and ab["significant"] is True
    assert ab["confidence"] == pytest.approx(1 - ab["p_value"])


def test_transactional_sends_are_counted(client: TestClient, services: Services, mailbox: Mailbox) -> None:
    # GIVEN the account's sends around now
    now = datetime.now(UTC)
    window = {"granularity": "hour", "start": (now - timedelta(hours=1)).isoformat(),
              "end": (now + timedelta(hours=1)).isoformat()}
    before = client.get("/v1/stats", params=window).json()["counts"]["sent"]
    # WHEN one password reset is sent
    to = f"reset-{now.strftime('%H%M%S%f')}@reports.example.com"
    resp = client.post("/v1/messages", json={"template": "password_reset", "to": to,
                                             "context": {"reset_url": "https://example.com/r",
                                                         "expires_in_minutes": 30}})
    assert resp.status_code == 202, resp.text
    wait_until(lambda: client.get(f"/v1/messages/{resp.json()['id']}").json()["status"] == "sent", timeout=15,
               what="reset sent")
    # THEN the account's hourly sends grow by exactly one
    wait_until(lambda: client.get("/v1/stats", params=window).json()["counts"]["sent"] == before + 1, timeout=10,
               what="send counted")
