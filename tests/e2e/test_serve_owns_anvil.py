"""`crm-ledger serve` in its default setup (no RPC URL: it starts Anvil) killed -9 leaves no
Anvil behind, and the restarted service is ready and anchors what was written before the kill
(issue 10, finding 3: the orphan kept the port, /readyz answered 503 and nothing was anchored).
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
from tests.chain.test_anvil_ownership import alive, gone_within
from tests.e2e.conftest import free_port, wait_for

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

    def ready(self) -> bool:
        """Whether /readyz is 200 and the anchorer runs."""
        try:
            answer = httpx.get(f"{self.base}/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json()["chain"]["state"] == "running"

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
    engine = make_engine(database_url)
    upgrade_database(engine)
    with make_session_factory(engine).begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="ownership test")
    engine.dispose()
    headers = {"Authorization": f"Bearer {key}"}
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

    assert gone_within(first_anvil, 30), "the Anvil outlived the service killed -9"
    serve.start(batch_max_age_seconds=0.05)
    assert serve.anvil_pid() != first_anvil

    def anchored() -> bool:
        answer = httpx.get(f"{serve.base}/v1/records/{record}/receipt", headers=headers)
        return answer.status_code == 200

    wait_for(anchored, 60)
