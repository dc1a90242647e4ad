"""The `chain` scenario: the Anvil node killed -9 under load, then restarted from its state."""

from __future__ import annotations

import time
from pathlib import Path

from crm_ledger.chain.node import start_anvil

from .harness import Outcome, free_port, loaded_service
from .ledger import finish, settle


def scenario_chain(work: Path, *, outage: float) -> Outcome:
    """The chain killed -9 for `outage` seconds under load, then restarted from its state."""
    outcome = Outcome("chain killed", notes=[f"{outage:.0f} s outage"])
    database_url = f"sqlite:///{work / 'ledger.sqlite'}"
    state = work / "chain" / "anvil-state.json"
    chain = start_anvil(port=free_port(), state_path=state)
    port = chain.port
    try:
        env = {"CRM_LEDGER_DATA_DIR": str(work), "CRM_LEDGER_RPC_URL": chain.rpc_url}
        with loaded_service(env, max_writes=100_000) as (service, writer):
            time.sleep(3)  # the deployment reaches the state file (written every second)
            chain.kill()
            down_at = time.monotonic()
            before = len(writer.acknowledged)
            time.sleep(outage)
            during = len(writer.acknowledged) - before
            outcome.notes.append(f"{during} writes acknowledged while the chain was down")
            if during == 0:
                outcome.notes.append("no write acknowledged during the outage")
                outcome.server_errors += 1
            chain = start_anvil(port=port, state_path=state)
            restarted_at = time.monotonic()
            time.sleep(1)
            writer.stop()
            settle(database_url, 180)
            outcome.recovery_seconds = time.monotonic() - restarted_at
            rollbacks = service.readyz()["chain"].get("rollbacks_detected", 0)
            outcome.notes.append(
                f"rollbacks repaired: {rollbacks}; outage {restarted_at - down_at:.0f} s"
            )
            outcome.server_errors += service.server_errors_counted()
            return finish(
                outcome, writer, database_url, chain.rpc_url, settle_timeout=120, service=service
            )
    finally:
        chain.kill()
