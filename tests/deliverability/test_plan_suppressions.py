"""What a campaign plan checks its audience against: the whole suppression list read once when it is short,
per-address reads when it is not, with the same answers either way."""

from __future__ import annotations

import pytest

from jetmail.services import Services


@pytest.mark.parametrize("max_pages", [0, 4], ids=["per-address", "whole-list"])
def test_a_plan_sees_every_suppression_and_erasure_whichever_way_it_reads_them(
        services: Services, unique: str, max_pages: int) -> None:
    # GIVEN a complaint, an unsubscribe, a hard bounce and an erasure among an audience of mixed-case addresses
    domain = f"ps{max_pages}-{unique}.example.com"
    store = services.suppressions
    store.add(f"complained@{domain}", reason="spam_complaint")
    store.add(f"Unsubscribed@{domain}", reason="unsubscribed")
    store.add(f"bounced@{domain}", reason="hard_bounce")
    store.add_erased(f"erased@{domain}")
    audience = [f"COMPLAINED@{domain}", f"unsubscribed@{domain}", f"bounced@{domain}", f"Erased@{domain}",
                f"fine@{domain}"]
    # WHEN a plan asks about them
    found = store.for_plan(max_pages=max_pages).suppressed_among(audience)
    # THEN each of the four is found with its reason, and nobody else
    assert found == {f"complained@{domain}": "spam_complaint", f"unsubscribed@{domain}": "unsubscribed",
                     f"bounced@{domain}": "hard_bounce", f"erased@{domain}": "erased"}


def test_a_plan_reads_the_whole_list_once_and_none_with_no_page_to_spend(
        services: Services, unique: str) -> None:
    # GIVEN a suppression list that fits in one page
    store = services.suppressions
    store.add(f"one@pl-{unique}.example.com", reason="manual")
    # THEN reading it whole finds the entry, and with no page to spend the list is not read whole
    listed = store.listed(max_pages=1)
    assert listed is not None and listed[f"one@pl-{unique}.example.com"] == "manual"
    assert store.listed(max_pages=0) is None
    # AND a plan reads it once however many chunks it asks about
    plan = store.for_plan(max_pages=1)
    assert plan.suppressed_among([f"one@pl-{unique}.example.com"]) == {f"one@pl-{unique}.example.com": "manual"}
    store.add(f"two@pl-{unique}.example.com", reason="manual")
    # (an entry added after the read reaches the plan's batches through the stop events, not this read)
    assert plan.suppressed_among([f"two@pl-{unique}.example.com"]) == {}
