"""What one plan page costs as a list grows, and how soon the planner has its first batch.

    .venv/bin/python bench/bench_plan.py [--sizes 2000,10000,30000]

On a private local stack (moto server), writes list memberships straight into the table (no
contacts: the plan reads memberships only), then for each list size times: the first Query of the
plan (100 members), a 1 MB page at the start, the middle and the end of the list, and the planner
until its first batch of 100 (membership read plus one suppression BatchGetItem). Lists of earlier
sizes stay in the table, as they would in a real account.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from jetmail.devstack.stack import LocalStack


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return (time.perf_counter() - started) * 1000, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,30000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from jetmail.audience.contacts import member_item
    from jetmail.bootstrap import bootstrap
    from jetmail.campaigns.model import AudienceSource, CampaignCreate
    from jetmail.campaigns.planner import Planner
    from jetmail.config import Settings
    from jetmail.services import Services

    with tempfile.TemporaryDirectory(prefix="jetmail-bench-") as tmp:
        stack = LocalStack(Path(tmp), preferred_ports=False)
        try:
            state = stack.up(["nats", "moto"])
            os.environ.update({k: v for k, v in state.env().items() if k.startswith(("JETMAIL_", "AWS_"))})
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
            list(bootstrap(settings, create_table=True))
            services = Services(settings)
            contacts = services.contacts
            print(f"{'members':>8} {'table items':>11} {'first 100':>10} {'1 MB page: first':>17} {'middle':>8} "
                  f"{'last':>8} {'pages':>6} {'planner to 1st batch':>21}")
            items = 0
            for size in sizes:
                lst = contacts.create_list(f"bench {size}")
                now = "2026-01-01T00:00:00+00:00"
                services.table.batch_put([
                    member_item(lst.id, {"email": f"m{i:07d}@bench.example.com", "name": f"Member {i}",
                                         "language": "en", "timezone": "Europe/Berlin",
                                         "attributes": {"plan": "pro", "seats": i % 50}}, "subscribed", now)
                    for i in range(size)])
                items += size + 1
                first_ms, _ = timed(lambda lst=lst: next(contacts.member_pages(lst.id, first_page=100)))
                page_ms: list[float] = []
                pages = contacts.member_pages(lst.id)
                while True:
                    ms, page = timed(lambda pages=pages: next(pages, None))
                    if page is None:
                        break
                    page_ms.append(ms)
                planner = Planner(contacts=contacts, segments=services.segments, suppressions=services.suppressions)
                campaign = CampaignCreate(name="bench", template="getting_started",
                                          audience=[AudienceSource(list_id=lst.id)])
                plan_ms, _ = timed(lambda planner=planner, campaign=campaign: next(
                    planner.batches(campaign, run="main")))
                middle = page_ms[len(page_ms) // 2]
                print(f"{size:>8} {items:>11} {first_ms:>8.0f}ms {page_ms[0]:>15.0f}ms {middle:>6.0f}ms "
                      f"{page_ms[-1]:>6.0f}ms {len(page_ms):>6} {plan_ms:>19.0f}ms", flush=True)
        finally:
            stack.down()


if __name__ == "__main__":
    main()
