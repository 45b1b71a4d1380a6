"""Fault: an SMTP server answering a share of attempts with 421/451, 550, a dropped connection or a stall."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest
from fastapi.testclient import TestClient
from faultkit import FaultStack, all_mailed, quiet, result_line, tally

from jetmail.api.app import create_app
from jetmail.campaigns.signals import JOURNAL_STREAM, Journal, journal_subject
from jetmail.devstack.stack import wait_until

FAULTS = "421=0.05,451=0.05,550=0.02,drop=0.02,stall=0.01"
CAMPAIGN_RECIPIENTS = 2_000
TRANSACTIONAL = 200


def journal_values(nats_url: str, campaign_id: str, emails: list[str]) -> dict[str, str]:
    """Each address's journaled outcome (``failed|<reason>``...), read from every batch's journal."""
    async def read() -> dict[str, str]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            every = journal_subject(campaign_id, "main", 0)[:-1] + ">"
            info = await js.stream_info(JOURNAL_STREAM, subjects_filter=every)
            found: dict[str, str] = {}
            for batch in sorted({int(subject.rsplit(".", 2)[1]) for subject in info.state.subjects or {}}):
                for entry in (await Journal(js).read(campaign_id, "main", batch)).values():
                    found[entry["e"]] = f"{entry['s']}|{entry.get('r') or entry.get('m') or ''}"
            return {e: found.get(e, "") for e in emails}
        finally:
            await nc.close()

    return asyncio.run(read())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smtp_failures_are_retried_or_recorded_never_lost_or_doubled(fault_stack: Callable[..., FaultStack],
                                                                     unique: str) -> None:
    # GIVEN a sink failing 15% of delivery attempts (seeded) and two workers; the stall outlasts the client's
    # SMTP timeout (5 s here, 10 s by default; shorter ones expire on a busy machine), then the connection drops
    faults = fault_stack(sink_env={"JETMAIL_SINK_FAULTS": FAULTS, "JETMAIL_SINK_SEED": "7",
                                   "JETMAIL_SINK_STALL_SECONDS": "7"}, worker_env={"JETMAIL_SMTP_TIMEOUT_S": "5"})
    domain = f"s{unique}.example.com"
    list_id, emails = faults.audience(domain, CAMPAIGN_RECIPIENTS, prefix="c")
    client = TestClient(create_app(faults.iso.settings, services=faults.services),
                        headers={"Authorization": f"Bearer {faults.iso.token}"})
    # WHEN a campaign goes out and transactional messages are sent through the API meanwhile
    campaign_id = faults.send_campaign(list_id, f"smtp-{unique}")
    transactional: dict[str, str] = {}
    for i in range(TRANSACTIONAL):
        to = f"t{i}@{domain}"
        resp = client.post("/v1/messages", headers={"Idempotency-Key": f"{unique}-{i}"}, json={
            "template": "password_reset", "to": to,
            "context": {"reset_url": "https://app.example.com/r", "expires_in_minutes": 5}})
        assert resp.status_code == 202, resp.text
        transactional[to] = resp.json()["id"]
    everyone = emails + list(transactional)

    def final(to: str) -> bool:
        return client.get(f"/v1/messages/{transactional[to]}").json()["status"] in ("sent", "failed")

    # THEN every address the sink never refused with a 550 gets exactly one email
    view = faults.finish(campaign_id, timeout=300)
    wait_until(lambda: all(final(to) for to in transactional), timeout=300, what="transactional messages final")
    injected = faults.injected()
    rejected = {f["rcpt"] for f in injected if f["fault"] == "550"}
    all_mailed(faults.mailbox, set(everyone) - rejected, domain=domain, timeout=120)
    quiet(faults.mailbox)
    result = tally(faults.mailbox, set(everyone) - rejected, domain=domain, never=rejected)
    # and a 550 is final: recorded with its reason, never tried again
    refused_at = {f["rcpt"]: f["attempt"] for f in reversed(injected) if f["fault"] == "550"}
    after_550 = [f for f in injected if f["attempt"] > refused_at.get(f["rcpt"], f["attempt"])]
    campaign_rejected = sorted(r for r in rejected if r.startswith("c"))
    journaled = journal_values(faults.iso.settings.nats_url, campaign_id, campaign_rejected)
    listed = client.get(f"/v1/campaigns/{campaign_id}/failures", params={"limit": 500}).json()
    reasons = {f["email"]: f["reason"] for f in listed["data"]}
    # recorded twice over: in the batch's journal and in the campaign's failures listing, with the 550
    recorded = [r for r in campaign_rejected
                if journaled[r].startswith("failed|") and "550" in journaled[r] and "550" in reasons.get(r, "")]
    messages = {to: client.get(f"/v1/messages/{mid}").json() for to, mid in transactional.items() if to in rejected}
    recorded += [to for to, m in messages.items() if m["status"] == "failed" and "550" in (m["error"] or "")]
    kinds = {k: sum(1 for f in injected if f["fault"] == k) for k in ("421", "451", "550", "drop", "stall")}
    result_line("SMTP 421/451/550/drop/stall", result, permanent_recorded=len(recorded),
                permanent_total=len(rejected), injected=",".join(f"{k}:{n}" for k, n in kinds.items()))
    assert all(kinds.values()), kinds  # every kind of fault was exercised
    assert result.lost == [], {to: client.get(f"/v1/messages/{transactional[to]}").json()["error"]
                               for to in result.lost if to in transactional} or result.lost
    assert result.duplicated == {}
    assert result.unexpected == []
    assert after_550 == []
    assert len(recorded) == len(rejected)
    assert listed["next_cursor"] is None and sorted(reasons) == campaign_rejected
    assert view["progress"]["failed"] == len(campaign_rejected)
    assert view["progress"]["sent"] == CAMPAIGN_RECIPIENTS - len(campaign_rejected)
