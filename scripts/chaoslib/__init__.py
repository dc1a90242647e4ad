"""Chaos suite: the service under write load while its process, chain, database or disk fails.

Run `python scripts/chaos.py` (every scenario, full length: ~10 minutes) or pick some:
`python scripts/chaos.py kill chain --kills 5 --chain-outage 10`. Everything runs on 127.0.0.1
in temporary directories, every loop is bounded and every scenario stops by itself.

Scenarios (each starts `crm-ledger serve` as a subprocess, as `make run` does):

    kill      kill -9 of the service N times under write load (SQLite journal), in the default
              setup: the service starts its own Anvil on a state file in its data directory
    chain     the Anvil node killed -9 for S seconds under load, then restarted from its
              state file (which lags by up to a second: a rollback the anchorer must repair)
    postgres  a throwaway PostgreSQL cluster of its own (initdb, a free port) restarted with
              `pg_ctl restart -m immediate` N times under load
    disk      the SQLite journal on a small tmpfs that is then filled: writes must answer 503
              problem documents, nothing half-written, and recover once space returns
    fuzz      schemathesis against /openapi.json with a key of every role

The load is a client that POSTs interactions, each with its own Idempotency-Key, and retries a
write with the same key after a connection error or a 503, as a careful client does; a 201 is an
acknowledged write. After each scenario the journal and the chain are checked: every
acknowledged id is read back from the journal and its receipt verified against the chain
(`lost`), no seq is in two batches on chain (`anchored twice`), journal and chain seqs are
contiguous (`seq gaps`), and every 5xx that is not a 503 problem document is a bug (`5xx`).
`recovery` is the longest time from a fault's end (or the kill) to the next acknowledged write
(for `chain`: to the backlog anchored again).

Exports (for scripts/chaos.py and tests/e2e/test_chaos.py): `SCENARIOS`, `Outcome`,
`run_scenarios`, `format_table`. One module per scenario; `harness` (the service, the writer,
`Outcome`) and `ledger` (the checks after a scenario) are what they share.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chain import scenario_chain
from .disk import scenario_disk
from .fuzz import scenario_fuzz
from .harness import Outcome
from .kill import scenario_kill
from .postgres import scenario_postgres

SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "kill": scenario_kill,
    "chain": scenario_chain,
    "postgres": scenario_postgres,
    "disk": scenario_disk,
    "fuzz": scenario_fuzz,
}


def run_scenarios(names: list[str], **sizes: Any) -> list[Outcome]:
    """Run scenarios `names` one after another, each in a temporary directory of its own."""
    arguments = {
        "kill": {"kills": sizes.get("kills", 20)},
        "chain": {"outage": sizes.get("chain_outage", 60.0)},
        "postgres": {"restarts": sizes.get("pg_restarts", 5)},
        "disk": {"full_seconds": sizes.get("disk_full_seconds", 10.0)},
        "fuzz": {
            "examples": sizes.get("fuzz_examples", 20),
            "phases": sizes.get("fuzz_phases", "examples,coverage,fuzzing"),
        },
    }
    outcomes = []
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"crm-ledger-chaos-{name}-"))
        try:
            outcomes.append(SCENARIOS[name](work, **arguments[name]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return outcomes


def format_table(outcomes: list[Outcome]) -> str:
    """The outcomes as a Markdown table, then each scenario's notes."""
    lines = [
        "| scenario | acknowledged | lost | anchored twice | seq gaps | 5xx | 503 | recovery |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.acknowledged} | {o.lost} | {o.anchored_twice} | {o.seq_gaps} "
            f"| {o.server_errors} | {o.unavailable} | {o.recovery_seconds:.1f} s |"
        )
    lines.append("")
    for o in outcomes:
        lines += [f"- {o.scenario}: " + "; ".join(o.notes)] if o.notes else []
    return "\n".join(lines)
