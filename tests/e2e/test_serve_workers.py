"""`crm-ledger serve --workers 2` (issue 14, part 3): two API processes on one port serve writes,
exactly one anchorer runs (in the chain process, or in one API process while the other's stands
by), the service's own Anvil is started once, what the processes wrote is anchored, and whichever
process answers, `/metrics` counts both processes' writes and `/readyz` shows every process's
workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.keys import Role, create_api_key
from tests.api.helpers import interaction
from tests.e2e.conftest import free_port
from tests.processes import child_commands
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.chain,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux"),
]

# Each API process imports the whole service before it answers: slow on a loaded machine.
STARTUP_SECONDS = 180


@pytest.fixture
def admin_key(database_url: str) -> str:
    """An admin key in the journal the service will open."""
    engine = make_engine(database_url)
    upgrade_database(engine)
    with make_session_factory(engine).begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="serve --workers test")
    engine.dispose()
    return key


@pytest.fixture(params=["chain process", "chain workers in the API processes"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> Iterator[tuple[str, Path, int]]:
    """`serve --workers 2` with no RPC URL (it starts Anvil), the chain workers in their own
    process (the default) or among the API processes; yields (URL, data dir, pid)."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_LEDGER_")}
    env.update(
        CRM_LEDGER_DATA_DIR=str(data_dir),
        CRM_LEDGER_DATABASE_URL=database_url,
        CRM_LEDGER_ANVIL_PORT=str(free_port()),
        CRM_LEDGER_BATCH_MAX_AGE_SECONDS="0.05",
        CRM_LEDGER_CHAIN_PROCESS=str(request.param == "chain process").lower(),
    )
    command = [str(Path(sys.executable).parent / "crm-ledger"), "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", "2", "--log-level", "warning"], env=env, start_new_session=True
    )
    try:
        yield f"http://127.0.0.1:{port}", data_dir, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _readiness(base: str) -> dict[str, Any] | None:
    """/readyz's chain section, asked on a new connection (so either process answers)."""
    try:
        answer = httpx.get(f"{base}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    section: dict[str, Any] = answer.json()["chain"]
    return section


def _states(samples: list[Any], worker: str) -> list[tuple[int, str]]:
    """(pid, state) of each process's `worker` in /metrics' `crm_ledger_worker_state`."""
    return sorted(
        (int(s.labels["pid"]), s.labels["state"])
        for s in samples
        if s.name == "crm_ledger_worker_state" and s.labels["worker"] == worker and s.value == 1
    )


def test_two_api_processes_serve_writes_with_one_anchorer_and_one_anvil(
    served: tuple[str, Path, int], admin_key: str
) -> None:
    base, data_dir, pid = served
    wait_for(lambda: (_readiness(base) or {}).get("state") == "running", STARTUP_SECONDS)
    children = child_commands(pid)
    api_processes = [p for p, command in children.items() if "multiprocessing.spawn" in command]
    assert len(api_processes) == 2, children
    anvils = [command for command in children.values() if "anvil" in command]
    assert len(anvils) == 1 and str(data_dir) in anvils[0], children
    chain_processes = [p for p, command in children.items() if "worker chain" in command]
    # The anchorer runs in the chain process, or in whichever API process holds its lock
    # while the other's stands by.
    anchorer_pids = chain_processes or api_processes
    assert len(chain_processes) in (0, 1), children

    # Whichever process answers (a new connection each time), /readyz shows the workers of
    # every process: the anchorer running (not the copy standing by), and the webhooks
    # relay running in one of the API processes. (Each process publishes its states every
    # half second: at first one may answer before the other's first "running" is out.)
    def settled() -> bool:
        sections = [_readiness(base) for _ in range(6)]
        return all(
            section is not None
            and section["state"] == section["workers"]["webhooks"]["state"] == "running"
            for section in sections
        )

    wait_for(settled, STARTUP_SECONDS)
    for _ in range(6):
        section = wait_for(lambda: _readiness(base), 30)
        assert section["state"] == "running" and section["pid"] in anchorer_pids, section
        if chain_processes:
            assert section["indexer"]["pid"] == chain_processes[0], section
        relay = section["workers"]["webhooks"]
        assert relay["state"] == "running" and relay["pid"] in api_processes, section

    headers = {"Authorization": f"Bearer {admin_key}"}
    customer = httpx.post(
        f"{base}/v1/customers",
        json={"name": "Grace Hopper", "email": "grace@example.com"},
        headers=headers,
        timeout=30,
    )
    assert customer.status_code == 201, customer.text
    records = []
    for n in range(20):
        # A new connection per write: the two processes share the writes.
        written = httpx.post(
            f"{base}/v1/interactions",
            json=interaction(customer.json()["id"], details={"call": n}),
            headers=headers,
            timeout=30,
        )
        assert written.status_code == 201, written.text
        records.append(written.json()["id"])

    def all_anchored() -> bool:
        return all(
            httpx.get(f"{base}/v1/records/{record}/receipt", headers=headers, timeout=5).status_code
            == 200
            for record in records
        )

    wait_for(all_anchored, 90)

    # Whichever process answers (a new connection each time), /metrics counts the writes of
    # both and shows each process's anchorer: one running, one standing by.
    for _ in range(6):
        text = httpx.get(f"{base}/metrics", timeout=10).text
        samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]
        written = [
            s.value
            for s in samples
            if s.name == "crm_ledger_records_written_total" and s.labels["kind"] == "interaction"
        ]
        assert written == [20.0], written
        relays = _states(samples, "webhooks")
        assert sorted(state for _, state in relays) == ["running", "standby"], relays
        assert {p for p, _ in relays} == set(api_processes), relays
        anchorers = _states(samples, "anchorer")
        if chain_processes:
            assert anchorers == [(chain_processes[0], "running")], anchorers
        else:
            assert sorted(state for _, state in anchorers) == ["running", "standby"], anchorers
