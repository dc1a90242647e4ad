"""`crm-ledger serve --workers 2` (issue 14, part 3): two API processes on one port serve writes,
exactly one of them runs the anchorer while the other's stands by, the service's own Anvil is
started once, what the processes wrote is anchored, and `/metrics` counts both processes'
writes whichever answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.keys import Role, create_api_key
from tests.api.helpers import interaction
from tests.e2e.conftest import free_port
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


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[tuple[str, Path, int]]:
    """`serve --workers 2` with no RPC URL (it starts Anvil); yields (URL, data dir, pid)."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_LEDGER_")}
    env.update(
        CRM_LEDGER_DATA_DIR=str(data_dir),
        CRM_LEDGER_DATABASE_URL=database_url,
        CRM_LEDGER_ANVIL_PORT=str(free_port()),
        CRM_LEDGER_BATCH_MAX_AGE_SECONDS="0.05",
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


def _anchorer_state(base: str) -> str | None:
    """The anchorer's state in /readyz, asked on a new connection (so either process answers)."""
    try:
        answer = httpx.get(f"{base}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    state: str = answer.json()["chain"]["state"]
    return state


def _children(pid: int) -> list[str]:
    """The command lines of `pid`'s child processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status:
            found.append(command)
    return found


def test_two_api_processes_serve_writes_with_one_anchorer_and_one_anvil(
    served: tuple[str, Path, int], admin_key: str
) -> None:
    base, data_dir, pid = served
    seen: set[str] = set()

    def both_anchorer_states_seen() -> bool:
        state = _anchorer_state(base)
        if state is not None:
            seen.add(state)
        return {"running", "standby"} <= seen

    # One process holds the anchorer's lock and runs it; the other's anchorer stands by. Both
    # answer on the one port, so asking often enough on new connections meets both.
    wait_for(both_anchorer_states_seen, STARTUP_SECONDS)
    children = _children(pid)
    assert sum("multiprocessing.spawn" in command for command in children) == 2, children
    anvils = [command for command in children if "anvil" in command]
    assert len(anvils) == 1 and str(data_dir) in anvils[0], children

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
        anchorers = {
            (s.labels["pid"], s.labels["state"])
            for s in samples
            if s.name == "crm_ledger_worker_state"
            and s.labels["worker"] == "anchorer"
            and s.value == 1
        }
        assert sorted(state for _, state in anchorers) == ["running", "standby"], anchorers
