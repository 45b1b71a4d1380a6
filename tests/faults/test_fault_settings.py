"""The fault settings of the local SMTP sink and moto server (fast; the scenarios using them are slow)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from jetmail.devstack.moto_server import Faults, FaultSettings
from jetmail.devstack.smtp_sink import FaultPlan, parse_faults


def test_sink_fault_shares_are_parsed_and_checked() -> None:
    # GIVEN share specs WHEN parsed THEN good ones map kind → share and bad ones say what is wrong
    assert parse_faults("421=0.05, 550=0.02,stall=0") == {"421": 0.05, "550": 0.02, "stall": 0.0}
    assert parse_faults("") == {}
    for bad, message in [("503=0.1", "KIND"), ("421", "KIND=SHARE"), ("421=x", "not a number"),
                         ("421=1.5", "between 0 and 1"), ("421=0.6,451=0.6", "more than 1")]:
        with pytest.raises(ValueError, match=message):
            parse_faults(bad)


def test_sink_fault_plan_is_reproducible_and_follows_the_shares() -> None:
    # GIVEN a plan with a seed
    plan = FaultPlan(parse_faults("421=0.1,550=0.05,drop=0.05"), seed=3)
    # WHEN 20,000 (address, attempt) pairs are drawn twice
    first = [plan.pick(f"a{i}@example.com", 1 + i % 3) for i in range(20_000)]
    again = [FaultPlan(plan.shares, seed=3).pick(f"a{i}@example.com", 1 + i % 3) for i in range(20_000)]
    # THEN the draws repeat exactly, another seed differs, and each kind comes up about as often as its share
    assert first == again
    assert first != [FaultPlan(plan.shares, seed=4).pick(f"a{i}@example.com", 1 + i % 3) for i in range(20_000)]
    counts = Counter(first)
    assert abs(counts["421"] / 20_000 - 0.1) < 0.01
    assert abs(counts["550"] / 20_000 - 0.05) < 0.01
    assert abs(counts[None] / 20_000 - 0.8) < 0.015


def test_sink_refuses_bad_fault_settings_with_one_line() -> None:
    # GIVEN a bad --faults WHEN the sink starts THEN it exits 2 naming the problem, without a traceback
    done = subprocess.run([sys.executable, "-m", "jetmail.devstack.smtp_sink", "--dir", "/nonexistent",
                           "--faults", "421=2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "between 0 and 1" in done.stderr and "Traceback" not in done.stderr


def test_moto_faults_hit_the_share_and_only_the_chosen_operations() -> None:
    # GIVEN 20% of UpdateItem requests set to fail with two errors, seeded
    faults = Faults()
    faults.configure(FaultSettings(share=0.2, errors=["ThrottlingException", "stall"], seed=1,
                                   operations=["UpdateItem"]))
    # WHEN 5,000 UpdateItem and 5,000 GetItem requests arrive
    picked = [faults.pick("UpdateItem") for _ in range(5_000)]
    others = [faults.pick("GetItem") for _ in range(5_000)]
    # THEN about 20% of the UpdateItems fail, both errors occur, no GetItem fails, and the report counts them
    assert abs(sum(p is not None for p in picked) / 5_000 - 0.2) < 0.02
    assert {p for p in picked if p} == {"ThrottlingException", "stall"}
    assert others == [None] * 5_000
    assert sum(faults.report()["injected"].values()) == sum(p is not None for p in picked)
    # and share 0 turns injection off
    faults.configure(FaultSettings(share=0))
    assert faults.pick("UpdateItem") is None
