"""`crm-ledger serve` in its default setup (no RPC URL: it starts Anvil) killed -9 leaves no
Anvil behind, and the restarted service is ready and anchors what was written before the kill
(issue 10, finding 3: the orphan kept the port, /readyz answered 503 and nothing was anchored).
Killed again and again, it comes back on the same chain every time (the chaos run's kill row
came back on a "reset" chain: Anvil loaded one of its restarts' genesis blocks at random).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crm_ledger.chain.node import PID_FILE_NAME
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.keys import Role, create_api_key
from tests.api.helpers import interaction
from tests.chain.test_anvil_ownership import alive, wait_until_gone
from tests.e2e.conftest import free_port
from tests.e2e.test_faults import assert_journal_matches_chain
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.chain,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux"),
]


class Serve:
    """`crm-ledger serve` as a subprocess on a data directory, no RPC URL."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("CRM_LEDGER_")
        }
        self.env.update(
            CRM_LEDGER_DATA_DIR=str(data_dir),
            CRM_LEDGER_DATABASE_URL=database_url,
            CRM_LEDGER_ANVIL_PORT=str(free_port()),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, batch_max_age_seconds: float) -> None:
        """Start it and wait until /readyz answers 200 with anchoring running."""
        env = {**self.env, "CRM_LEDGER_BATCH_MAX_AGE_SECONDS": str(batch_max_age_seconds)}
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "crm-ledger"),
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        wait_for(self.ready, 90)

    @property
    def anvil_url(self) -> str:
        """Where the service's own Anvil answers."""
        return f"http://127.0.0.1:{self.env['CRM_LEDGER_ANVIL_PORT']}"

    def ready(self) -> bool:
        """Whether /readyz is 200 and the anchorer runs; fails the test if anchoring halted."""
        try:
            answer = httpx.get(f"{self.base}/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        chain = answer.json().get("chain", {})
        assert chain.get("state") != "halted", chain.get("message")
        return answer.status_code == 200 and chain.get("state") == "running"

    def anvil_pid(self) -> int:
        """The pid of the Anvil the service started, from its pid file."""
        pid: int = json.loads((self.data_dir / PID_FILE_NAME).read_text())["pid"]
        return pid

    def kill(self) -> None:
        """SIGKILL the service process (not its Anvil)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, as an operator would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def admin_headers(database_url: str) -> dict[str, str]:
    """An admin key made straight in the (migrated) journal."""
    engine = make_engine(database_url)
    upgrade_database(engine)
    with make_session_factory(engine).begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="ownership test")
    engine.dispose()
    return {"Authorization": f"Bearer {key}"}


def genesis_hash(rpc_url: str) -> str:
    """The hash of block 0 on the node at `rpc_url`."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["0x0", False]}
    return str(httpx.post(rpc_url, json=body, timeout=10).json()["result"]["hash"])


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[Serve]:
    """The service, stopped (with any Anvil it left) at the end."""
    service = Serve(tmp_path / "data", database_url)
    yield service
    service.stop()
    pid_file = service.data_dir / PID_FILE_NAME
    if pid_file.exists():
        pid = json.loads(pid_file.read_text())["pid"]
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_kill_9_of_serve_takes_its_anvil_and_the_restart_anchors_the_backlog(
    serve: Serve, database_url: str
) -> None:
    headers = admin_headers(database_url)
    # Batches wait an hour: the record is still unanchored when the service dies.
    serve.start(batch_max_age_seconds=3600)
    customer = httpx.post(
        f"{serve.base}/v1/customers",
        json={"name": "Grace Hopper", "email": "grace@example.com"},
        headers=headers,
    ).json()["id"]
    written = httpx.post(
        f"{serve.base}/v1/interactions", json=interaction(customer), headers=headers
    )
    assert written.status_code == 201, written.text
    record = written.json()["id"]
    first_anvil = serve.anvil_pid()

    serve.kill()

    wait_until_gone(first_anvil, 30, "the Anvil to end with the service killed -9")
    serve.start(batch_max_age_seconds=0.05)
    assert serve.anvil_pid() != first_anvil

    def anchored() -> bool:
        answer = httpx.get(f"{serve.base}/v1/records/{record}/receipt", headers=headers)
        return answer.status_code == 200

    wait_for(anchored, 60)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_kill_9_of_serve_again_and_again_keeps_its_chain(serve: Serve, database_url: str) -> None:
    headers = admin_headers(database_url)
    serve.start(batch_max_age_seconds=0.05)
    customer = httpx.post(
        f"{serve.base}/v1/customers",
        json={"name": "Grace Hopper", "email": "grace@example.com"},
        headers=headers,
    ).json()["id"]
    genesis = genesis_hash(serve.anvil_url)
    acknowledged: set[str] = set()

    for kill in range(1, 4):
        for n in range(3):
            written = httpx.post(
                f"{serve.base}/v1/interactions",
                json=interaction(customer, details={"kill": kill, "n": n}),
                headers=headers,
            )
            assert written.status_code == 201, written.text
            acknowledged.add(written.json()["id"])
        serve.kill()
        serve.start(batch_max_age_seconds=0.05)  # fails at once if anchoring halted (a reset)
        assert genesis_hash(serve.anvil_url) == genesis, f"another chain after kill {kill}"

    def all_anchored() -> bool:
        answer = httpx.get(f"{serve.base}/readyz", timeout=5).json()
        return bool(answer["anchoring"]["pending_records"] == 0)

    wait_for(all_anchored, 60)
    assert_journal_matches_chain(database_url, serve.anvil_url, acknowledged)
