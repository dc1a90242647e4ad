"""`crm-ledger serve` runs the anchorer, the indexer and loyalty issuance in a child process of
their own (`crm-ledger worker chain`) on the Anvil `serve` started, and `/readyz` shows their
states from that process (`workers.board`). A chain child killed mid-run is started again and
anchors what was written meanwhile; SIGTERM to `serve` stops every child and leaves no status
files behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import interaction
from tests.e2e.test_serve_owns_anvil import Serve, admin_headers
from tests.processes import children
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.chain,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux"),
]


def chain_section(base: str) -> dict[str, object]:
    section: dict[str, object] = httpx.get(f"{base}/readyz", timeout=10).json()["chain"]
    return section


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[Serve]:
    service = Serve(tmp_path / "data", database_url)
    yield service
    service.stop()


def test_the_chain_workers_run_in_a_child_and_readyz_shows_them(
    serve: Serve, database_url: str
) -> None:
    headers = admin_headers(database_url)
    serve.start(batch_max_age_seconds=0.05)  # ready: the anchorer runs, in some process
    assert serve.process is not None
    [chain] = wait_for(lambda: children(serve.process.pid, "worker chain"), 60, what="a child")
    [mapper] = wait_for(lambda: children(serve.process.pid, "worker ingest"), 60)

    # Each process publishes its states every half second: the mapper's may come a little
    # after the chain process's.
    section = wait_for(
        lambda: chain_section(serve.base),
        60,
        until=lambda section: "ingest" in section["workers"],  # type: ignore[operator]
    )
    indexer, loyalty = section["indexer"], section["loyalty"]
    assert isinstance(indexer, dict) and isinstance(loyalty, dict)
    assert (section["pid"], indexer["pid"], loyalty["pid"]) == (chain, chain, chain)
    workers = section["workers"]
    assert isinstance(workers, dict)
    assert workers["ingest"]["pid"] == mapper
    assert workers["webhooks"]["pid"] == serve.process.pid  # the API process's own

    customer = httpx.post(
        f"{serve.base}/v1/customers",
        json={"name": "Ada", "email": "ada@example.com"},
        headers=headers,
        timeout=30,
    ).json()["id"]

    # Loyalty runs in the child; the API process reads the token it deployed, and the
    # customer's custodial address, itself (before: no balance, "not connected").
    account = wait_for(
        lambda: httpx.get(
            f"{serve.base}/v1/customers/{customer}/loyalty", headers=headers, timeout=30
        ).json(),
        60,
        until=lambda account: account.get("chain_balance") == 0,
    )
    assert account["address"].startswith("0x") and account["token"]["chain_id"] == 31337

    def anchored(record: str) -> bool:
        answer = httpx.get(f"{serve.base}/v1/records/{record}/receipt", headers=headers)
        return answer.status_code == 200

    first = httpx.post(
        f"{serve.base}/v1/interactions", json=interaction(customer), headers=headers, timeout=30
    ).json()["id"]
    wait_for(lambda: anchored(first), 60, what="the first record anchored")

    # Killed mid-run: while no chain process runs, nothing reports the anchorer; writes go on.
    os.kill(chain, signal.SIGKILL)
    wait_for(lambda: chain_section(serve.base)["state"], 30, until=lambda s: s == "stopped")
    second = httpx.post(
        f"{serve.base}/v1/interactions", json=interaction(customer), headers=headers, timeout=30
    )
    assert second.status_code == 201, second.text
    [restarted] = wait_for(
        lambda: [p for p in children(serve.process.pid, "worker chain") if p != chain],
        60,
        what="the chain process started again",
    )
    wait_for(lambda: anchored(second.json()["id"]), 90, what="the second record anchored")
    # Each process publishes its states every half second.
    wait_for(
        lambda: chain_section(serve.base),
        30,
        until=lambda section: (section["state"], section["pid"]) == ("running", restarted),
    )
    assert httpx.get(f"{serve.base}/readyz", timeout=10).status_code == 200

    serve.stop()
    assert serve.process.returncode == 0
    for pid in (restarted, mapper):
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, what=f"{pid} gone")
    assert not (serve.data_dir / "status").exists()
    assert not (serve.data_dir / "metrics").exists()


def test_with_the_chain_process_off_serve_runs_the_chain_workers_itself(
    serve: Serve, database_url: str
) -> None:
    serve.env["CRM_LEDGER_CHAIN_PROCESS"] = "false"
    serve.start(batch_max_age_seconds=0.05)
    assert serve.process is not None
    assert children(serve.process.pid, "worker chain") == []
    section = chain_section(serve.base)
    assert section["state"] == "running"
    # Only the mapper is a child: the board merges the API process's own anchorer.
    assert section["pid"] == serve.process.pid


def test_serve_refuses_to_start_when_its_anvil_cannot(tmp_path: Path) -> None:
    """`serve` starts the embedded Anvil itself before its processes: a taken port ends it at
    once, with a message a person can act on (not a traceback)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_LEDGER_")}
        env.update(
            CRM_LEDGER_DATA_DIR=str(tmp_path / "data"),
            CRM_LEDGER_ANVIL_PORT=str(port),
        )
        done = subprocess.run(
            [str(Path(sys.executable).parent / "crm-ledger"), "serve", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot start the service" in done.stderr, done.stderr
    assert str(port) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "status").exists()
