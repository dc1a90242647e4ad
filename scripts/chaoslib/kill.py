"""The `kill` scenario: kill -9 of the service again and again under load."""

from __future__ import annotations

import random
import time
from pathlib import Path

from .harness import HOST, Outcome, free_port, loaded_service, wait_until
from .ledger import finish, genesis_hash


def scenario_kill(work: Path, *, kills: int) -> Outcome:
    """kill -9 of the service `kills` times under load on a SQLite journal, in the default
    setup: no RPC URL, so the service starts its own Anvil (on a free port) with its state file
    in the data directory, and each restart loads that file."""
    outcome = Outcome("kill -9 service", notes=[f"{kills} kills, the service's own Anvil"])
    anvil_port = free_port()
    env = {"CRM_LEDGER_DATA_DIR": str(work), "CRM_LEDGER_ANVIL_PORT": str(anvil_port)}
    return _kill_repeatedly(outcome, env, f"http://{HOST}:{anvil_port}", work=work, kills=kills)


def _kill_repeatedly(
    outcome: Outcome, env: dict[str, str], rpc_url: str, *, work: Path, kills: int
) -> Outcome:
    database_url = f"sqlite:///{work / 'ledger.sqlite'}"
    with loaded_service(env, max_writes=100_000) as (service, writer):
        recoveries = []
        genesis = genesis_hash(rpc_url)
        for n in range(1, kills + 1):
            # Each kill lands once the service anchors again, so that every restart is seen to
            # come back on the same chain.
            wait_until(
                lambda: service.readyz().get("chain", {}).get("state") in ("running", "halted"),
                90,
                "anchoring running",
            )
            time.sleep(random.uniform(0.3, 1.5))
            killed_at = time.monotonic()
            service.kill9()
            service.start()
            wait_until(
                lambda at=killed_at: writer.acknowledged_after(at), 90, "a write after restart"
            )
            recoveries.append(time.monotonic() - killed_at)
            if genesis_hash(rpc_url) != genesis:
                outcome.chain_resets += 1
                outcome.notes.append(f"kill {n}: the chain came back with another genesis")
                break
        outcome.notes.append(f"chain resets: {outcome.chain_resets}")
        time.sleep(0.5)
        outcome.recovery_seconds = max(recoveries, default=0.0)
        writer.stop()
        outcome.server_errors += service.server_errors_counted()
        try:
            wait_until(
                lambda: service.readyz().get("chain", {}).get("state") == "running",
                60,
                "anchoring running after the last restart",
            )
        except TimeoutError as exc:
            outcome.notes.append(f"{exc}: {service.readyz().get('chain')}")
            outcome.server_errors += 1
        return finish(
            outcome,
            writer,
            database_url,
            rpc_url,
            settle_timeout=120,
            service=service,
        )
