"""One tracker per message: SES's open and click tracking stays off, and should it be switched on, its
events never double-count jetmail's tracked mail and pass the same machine and scanner rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from jetmail.campaigns.ids import campaign_message_id
from jetmail.messaging.messages import MessageStatus, SendRequest, new_message_id
from jetmail.services import Services

ROOT = Path(__file__).resolve().parents[2]
HUMAN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub...) read as plain values."""


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)))


def ses_event(kind: str, message_id: str, to: str, *, sent: datetime, at: datetime, user_agent: str, ip: str,
              link: str | None = None) -> str:
    """An SES event-publishing Open or Click, as SNS delivers its Message."""
    detail: dict[str, Any] = {"ipAddress": ip, "timestamp": at.isoformat().replace("+00:00", "Z"),
                              "userAgent": user_agent}
    if link is not None:
        detail.update(link=link, linkTags={})
    return json.dumps({
        "eventType": kind,
        "mail": {"timestamp": sent.isoformat().replace("+00:00", "Z"), "source": "noreply@example.com",
                 "messageId": f"ses-{message_id}", "destination": [to], "headersTruncated": False, "headers": [],
                 "tags": {"message_id": [message_id]}},
        kind.lower(): detail,
    })


def events_of(services: Services, message_id: str, kind: str) -> list[dict[str, Any]]:
    return list(services.stats_table.query_all(pk=f"EVT#{message_id}", sk_prefix=f"{kind}#"))


def test_the_configuration_set_publishes_no_ses_open_or_click() -> None:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    destinations = [r for r in template["Resources"].values()
                    if r["Type"] == "AWS::SES::ConfigurationSetEventDestination"]
    assert destinations
    for destination in destinations:
        types = {t.lower() for t in destination["Properties"]["EventDestination"]["MatchingEventTypes"]}
        assert {"bounce", "complaint", "delivery"} <= types
        assert not types & {"open", "click"}, "SES would add its own pixel and rewrite jetmail's tracked links"


def test_ses_opens_and_clicks_pass_the_machine_rules(services: Services, unique: str) -> None:
    # GIVEN a transactional message (jetmail does not track those itself) sent an hour ago
    to = f"sesopen-{unique}@example.com"
    message_id = new_message_id()
    sent = datetime.now(UTC) - timedelta(hours=1)
    services.table.put(services.messages.messages.record(
        message_id, request=SendRequest(template="password_reset", to=to), status=MessageStatus.SENT))
    intake = services.ses_events
    # WHEN SES reports an Apple Mail Privacy Protection fetch, a gateway's prefetch right after sending,
    # a link scanner, and then a person opening and clicking
    later = sent + timedelta(minutes=30)
    intake.process(ses_event("Open", message_id, to, sent=sent, at=later, user_agent="Mozilla/5.0", ip="17.58.1.2"))
    intake.process(ses_event("Open", message_id, to, sent=sent, at=sent + timedelta(seconds=1), user_agent=HUMAN_UA,
                             ip="198.51.100.20"))
    intake.process(ses_event("Click", message_id, to, sent=sent, at=later, user_agent="Mimecast Security Scanner",
                             ip="198.51.100.21", link="https://example.com/r"))
    intake.process(ses_event("Open", message_id, to, sent=sent, at=later + timedelta(minutes=1), user_agent=HUMAN_UA,
                             ip="203.0.113.9"))
    intake.process(ses_event("Click", message_id, to, sent=sent, at=later + timedelta(minutes=2),
                             user_agent=HUMAN_UA, ip="203.0.113.9", link="https://example.com/r"))
    # THEN only the person's open and click count as human
    opens = sorted((e["user_agent"], bool(e["machine"])) for e in events_of(services, message_id, "open"))
    assert opens == sorted([("Mozilla/5.0", True), (HUMAN_UA, True), (HUMAN_UA, False)])
    clicks = sorted((e["user_agent"], bool(e["machine"])) for e in events_of(services, message_id, "click"))
    assert clicks == sorted([("Mimecast Security Scanner", True), (HUMAN_UA, False)])


def test_ses_opens_of_mail_jetmail_tracks_are_not_counted_twice(services: Services, unique: str) -> None:
    # GIVEN a campaign message: jetmail's own pixel and links track it
    campaign_id = f"cmp_ses{unique}"
    services.table.put({"pk": f"CAMPAIGN#{campaign_id}", "sk": "BATCH#main#000001", "recipients": [f"c-{unique}@x.io"],
                        "variant": "A"})
    message_id = campaign_message_id(campaign_id, "main", 1, 0)
    sent = datetime.now(UTC) - timedelta(hours=1)
    # WHEN SES (its tracking switched on by hand) reports a person's open and click of it
    outcomes = services.ses_events.process(ses_event("Open", message_id, f"c-{unique}@x.io", sent=sent,
                                                     at=sent + timedelta(minutes=5), user_agent=HUMAN_UA,
                                                     ip="203.0.113.9"))
    outcomes += services.ses_events.process(ses_event("Click", message_id, f"c-{unique}@x.io", sent=sent,
                                                      at=sent + timedelta(minutes=6), user_agent=HUMAN_UA,
                                                      ip="203.0.113.9", link="https://example.com/"))
    # THEN they are left to jetmail's tracker: no event, no campaign or A/B counter moves
    assert dict(outcomes) == {"ignored": 2}
    assert events_of(services, message_id, "open") == [] and events_of(services, message_id, "click") == []
    assert services.stats_table.get(f"CAMPAIGN#{campaign_id}", "TOTALS") is None
    assert services.stats_table.get(f"CAMPAIGN#{campaign_id}", "VARIANT#A") is None
