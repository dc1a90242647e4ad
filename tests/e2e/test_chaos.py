"""The chaos suite (scripts/chaos.py and scripts/chaoslib/), reduced: a few kills, short
outages, a small schemathesis budget. Each scenario must lose nothing acknowledged, anchor
nothing twice, leave no seq gap and answer no 5xx but 503 problem documents. The full run's
figures are in docs/reliability.md."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from scripts import chaoslib

pytestmark = pytest.mark.chain

REDUCED: list[tuple[str, dict[str, Any]]] = [
    ("kill", {"kills": 2}),
    ("chain", {"chain_outage": 3.0}),
    ("postgres", {"pg_restarts": 1}),
    ("disk", {"disk_full_seconds": 1.0}),
    ("fuzz", {"fuzz_examples": 2, "fuzz_phases": "fuzzing"}),
]


@pytest.mark.parametrize(("scenario", "sizes"), REDUCED, ids=[name for name, _ in REDUCED])
def test_reduced_chaos_run_loses_duplicates_and_skips_nothing(
    scenario: str, sizes: dict[str, Any]
) -> None:
    if scenario == "postgres" and not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("initdb/pg_ctl are not installed: no throwaway PostgreSQL cluster")
    if scenario == "disk" and os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs the journal fills needs root")
    [outcome] = chaoslib.run_scenarios([scenario], **sizes)
    table = chaoslib.format_table([outcome])
    assert not any(note.startswith("skipped") for note in outcome.notes), table
    assert outcome.ok, table
    if scenario == "fuzz":
        assert "requests answered" in table
    else:
        assert outcome.acknowledged > 0, table
    if scenario == "disk":
        assert outcome.unavailable > 0, "the full disk answered no 503:\n" + table
