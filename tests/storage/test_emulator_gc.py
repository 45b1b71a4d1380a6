"""The local DynamoDB emulator's garbage collection (jetmail.devstack.moto_server.GcPauses)."""

from __future__ import annotations

import gc

from jetmail.devstack.moto_server import GcPauses


def test_the_emulator_counts_its_collections_and_freezes_what_survives_a_full_one() -> None:
    pauses = GcPauses()
    try:
        before = pauses.by_generation.get(2, [0, 0.0, 0.0])[0]
        survivor = [object() for _ in range(1000)]
        # WHEN the oldest generation is collected
        gc.collect(2)
        # THEN the pause is counted under it, with its time
        count, total, longest = pauses.by_generation[2]
        assert count == before + 1 and total > 0 and longest > 0
        # AND between requests what survived it leaves the collector's reach, once
        frozen = gc.get_freeze_count()
        pauses.freeze_survivors()
        assert gc.get_freeze_count() >= frozen + len(survivor)
        gc.collect(0)
        again = gc.get_freeze_count()
        pauses.freeze_survivors()  # no full collection since: nothing to do
        assert gc.get_freeze_count() == again
    finally:
        gc.callbacks.remove(pauses._note)
        gc.unfreeze()
