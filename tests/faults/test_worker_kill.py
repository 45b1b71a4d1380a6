"""Fault: SIGKILL one of two workers at random moments of a 10,000-recipient campaign, 10 rounds.

A worker killed after the SMTP server took a message and before its outcome reached the batch's
journal leaves that recipient unjournaled: the redelivered batch (once the dead worker's batch lease
has expired) sends that message again, with the same Message-ID (at-least-once in that window; see
docs/RELIABILITY.md). The window opens when the final ``.`` of DATA leaves the worker (the server
commits on it even if the worker is dead by then) and closes when the journal publish is stored, so
each kill may resend the few messages in it. This test counts
those resends and requires each to be one: the same Message-ID as the first copy, whose first copy
arrived around a kill. Any other second email to a recipient fails it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from faultkit import FaultStack, all_mailed, quiet, result_line, tally

from jetmail.devstack.stack import wait_until

RECIPIENTS = 10_000
ROUNDS = 10
KILL_WINDOW_S = 2.0  # a resend's first copy arrived this close to a kill (the sink is slow under load)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkilled_workers_lose_and_duplicate_nothing(fault_stack: Callable[..., FaultStack], unique: str) -> None:
    # GIVEN two workers and a campaign to 10,000 contacts
    faults = fault_stack()
    domain = f"k{unique}.example.com"
    list_id, emails = faults.audience(domain, RECIPIENTS)
    rng = random.Random(unique)
    # kill points spread over the campaign by how much has arrived, so every round lands mid-send
    thresholds = sorted(rng.randrange(RECIPIENTS // 20, RECIPIENTS * 9 // 10) for _ in range(ROUNDS))
    campaign_id = faults.send_campaign(list_id, f"kill-{unique}")
    # WHEN, 10 times, one of the two workers is SIGKILLed and a fresh one started in its place
    kills: list[float] = []
    for threshold in thresholds:
        wait_until(lambda t=threshold: faults.mailbox.count() >= t, timeout=240, what=f"{threshold} delivered")
        kills.append(time.time())
        faults.kill(rng.choice(faults.workers))
        faults.start_worker()
    # THEN the campaign completes and every recipient got exactly one email
    all_mailed(faults.mailbox, emails, domain=domain, timeout=300)
    quiet(faults.mailbox)
    result = tally(faults.mailbox, emails, domain=domain)
    view = faults.finish(campaign_id, timeout=120)
    # how long before (+) or after (-) the nearest kill each resent message's first copy arrived
    offsets = {r: min((k - t for k in kills), key=abs) for r, t in result.first_copy_at.items()}
    outside = {r: round(o, 3) for r, o in offsets.items() if abs(o) > KILL_WINDOW_S}
    result_line("worker SIGKILL x10, 10,000 recipients", result, permanent_recorded=0, permanent_total=0,
                resent_same_message_id=result.resent_same_message_id,
                distinct_second_emails=result.extra_copies - result.resent_same_message_id,
                first_copy_before_kill_ms="/".join(f"{o * 1000:.0f}" for o in sorted(offsets.values())) or "-",
                campaign_sent=view["progress"]["sent"])
    assert result.lost == []
    # every second copy is the known window's resend: same Message-ID, first copy taken as a worker died
    assert result.resent_same_message_id == result.extra_copies, result.duplicated
    assert outside == {}, f"resends whose first copy was not near a kill (seconds away): {outside}"
    assert result.unexpected == []
    assert view["progress"]["sent"] == RECIPIENTS
    assert view["progress"]["failed"] == 0
