"""Fault: DynamoDB throttling errors, stalled requests and lost replies for a share of the workers' calls."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from faultkit import FaultStack, all_mailed, quiet, result_line, tally

from stacktools import moto_faults

RECIPIENTS = 3_000
ERRORS = ["ProvisionedThroughputExceededException", "ThrottlingException", "stall", "lost_reply"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dynamodb_throttling_and_stalls_lose_and_duplicate_nothing(fault_stack: Callable[..., FaultStack],
                                                                    unique: str) -> None:
    # GIVEN two workers and a campaign to 3,000 contacts
    faults = fault_stack()
    domain = f"d{unique}.example.com"
    list_id, emails = faults.audience(domain, RECIPIENTS)
    moto = str(faults.iso.settings.aws_endpoint_url)
    campaign_id = faults.send_campaign(list_id, f"ddb-{unique}")
    # WHEN 20% of DynamoDB requests fail from then on (planning, batches, counters): throttled, held past the
    # SDK's 10 s read timeout and dropped, or applied with the reply held past it (the SDK retries a done write)
    moto_faults(moto, {"share": 0.2, "errors": ERRORS, "seed": 1, "stall_seconds": 11})
    all_mailed(faults.mailbox, emails, domain=domain, timeout=360)
    quiet(faults.mailbox, seconds=5)
    report = moto_faults(moto)
    moto_faults(moto, {"share": 0})
    # THEN every recipient got exactly one email and the campaign's counts are exact
    result = tally(faults.mailbox, emails, domain=domain)
    view = faults.finish(campaign_id, timeout=120)
    result_line("DynamoDB throttling/stall/lost reply 20%", result, permanent_recorded=0, permanent_total=0,
                injected=",".join(f"{k}:{n}" for k, n in sorted(report["injected"].items())))
    assert set(report["injected"]) == set(ERRORS)  # every kind of fault was exercised
    assert result.lost == []
    assert result.duplicated == {}
    assert result.unexpected == []
    assert view["progress"]["sent"] == RECIPIENTS
    assert view["progress"]["failed"] == 0
