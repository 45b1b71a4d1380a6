"""A campaign's plan streams: the first batch needs one small read, not a 1 MB page of the audience."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jetmail.audience.contacts import ContactStore
from jetmail.campaigns.model import AudienceSource, CampaignCreate
from jetmail.campaigns.planner import BATCH_SIZE, PAGE_SIZE, Planner
from jetmail.services import Services
from jetmail.storage.table import Table


def _list_of(store: ContactStore, name: str, addresses: list[str]) -> str:
    target = store.create_list(name)
    store.import_members(["\n".join(json.dumps({"email": a}) for a in addresses).encode()], list_id=target.id,
                         fmt="jsonl")
    return target.id


class CountingReader:
    """The real contact store, counting the members the planner has taken from it."""

    def __init__(self, store: ContactStore) -> None:
        self.store = store
        self.taken = 0
        self.first_pages: list[int | None] = []
        self.page_sizes: list[int | None] = []

    def iter_list_members(self, list_id: str, **kwargs: Any) -> Iterator[Any]:
        self.first_pages.append(kwargs.get("first_page"))
        self.page_sizes.append(kwargs.get("page_size"))
        for member in self.store.iter_list_members(list_id, **kwargs):
            self.taken += 1
            yield member


def test_first_page_caps_only_the_first_query(services: Services, unique: str) -> None:
    # GIVEN a list of 600 members and a store with its own request counter
    counted = Table(services.settings)
    store = ContactStore(counted)
    list_id = _list_of(store, f"first-page-{unique}", [f"fp{n:03d}-{unique}@example.com" for n in range(600)])
    # WHEN its pages are read with a first page of 100
    before = counted.requests
    pages = [len(page) for page in store.member_pages(list_id, first_page=BATCH_SIZE)]
    # THEN the first Query returned 100 members and the second (1 MB) all the rest: two requests in all
    assert pages == [100, 500]
    assert counted.requests - before == 2


def test_later_pages_hold_a_bounded_count_of_members(services: Services, unique: str) -> None:
    # GIVEN a list of 2,450 members
    counted = Table(services.settings)
    store = ContactStore(counted)
    list_id = _list_of(store, f"page-size-{unique}", [f"ps{n:04d}-{unique}@example.com" for n in range(2450)])
    # WHEN its pages are read as a plan reads them
    before = counted.requests
    pages = [len(page) for page in store.member_pages(list_id, first_page=BATCH_SIZE, page_size=1000)]
    # THEN one batch first, then pages of 1,000, one Query each
    assert pages == [100, 1000, 1000, 350]
    assert counted.requests - before == 4


def test_planner_yields_the_first_batch_after_one_batch_of_members(services: Services, unique: str) -> None:
    # GIVEN a list of 450 members
    addresses = [f"stream{n:03d}-{unique}@example.com" for n in range(450)]
    list_id = _list_of(services.contacts, f"stream-{unique}", addresses)
    reader = CountingReader(services.contacts)
    planner = Planner(contacts=reader, segments=services.segments, suppressions=services.suppressions)
    campaign = CampaignCreate(name="stream", template="getting_started", audience=[AudienceSource(list_id=list_id)])
    # WHEN the plan's first batch comes out
    batches = planner.batches(campaign, run="main")
    first = next(batches)
    # THEN it asked for a first read of one batch, and had taken exactly one batch's members
    assert reader.first_pages == [BATCH_SIZE]
    assert reader.page_sizes == [PAGE_SIZE]
    assert reader.taken == BATCH_SIZE
    assert [r.email for r in first.recipients] == addresses[:BATCH_SIZE]
    # AND the whole plan still covers everyone once, in batches numbered from 1
    rest = list(batches)
    assert [b.number for b in [first, *rest]] == [1, 2, 3, 4, 5]
    assert sorted(r.email for b in [first, *rest] for r in b.recipients) == addresses
