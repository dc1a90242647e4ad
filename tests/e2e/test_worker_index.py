"""`crm-ledger worker index`: the indexer as a process of its own, and one indexer per journal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from crm_ledger.app import create_app
from crm_ledger.chain.node import LocalNode
from crm_ledger.db.session import make_engine, make_session_factory
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.runtime import Runtime
from crm_ledger.workers.lock import INDEXER
from tests.e2e.conftest import TestClient, service_settings
from tests.waiting import until, wait_for

CLI = Path(sys.executable).parent / "crm-ledger"


def _timeline_states(client: TestClient, customer: str) -> list[str]:
    view = client.get(f"/v1/crm/customers/{customer}").json()
    return [item["ledger"]["state"] for item in view["timeline"]["items"]]


def test_worker_index_alone_brings_anchored_records_into_the_view(
    tmp_path: Path, database_url: str, anvil: LocalNode
) -> None:
    settings = service_settings(tmp_path, database_url, anvil.rpc_url, run_indexer=False)
    app = create_app(settings)
    with TestClient(app) as client:
        wait_for(lambda: client.get("/readyz").json()["chain"]["state"] == "running", 60)
        assert client.get("/readyz").json()["chain"]["indexer"]["state"] == "stopped"
        with app.state.runtime.session_factory.begin() as session:
            client.headers["Authorization"] = "Bearer " + create_api_key(session, role=Role.ADMIN)
        customer = client.post(
            "/v1/customers", json={"name": "Ada", "email": "ada@example.com"}
        ).json()["id"]
        body = {
            "customer_id": customer,
            "type": "support_call",
            "channel": "phone",
            "occurred_at": "2026-11-25T10:00:00Z",
            "details": {},
        }
        assert client.post("/v1/interactions", json=body).status_code == 201
        wait_for(lambda: _timeline_states(client, customer) == ["anchored"], 30)

        env = {
            **os.environ,
            "CRM_LEDGER_DATA_DIR": str(tmp_path / "worker"),
            "CRM_LEDGER_DATABASE_URL": database_url,
            "CRM_LEDGER_RPC_URL": anvil.rpc_url,
        }
        worker = subprocess.Popen(
            [str(CLI), "worker", "index", "--log-level", "warning"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: _timeline_states(client, customer) == ["confirmed"], 60)
            assert client.post("/v1/interactions", json=body).status_code == 201
            wait_for(lambda: _timeline_states(client, customer) == ["confirmed"] * 2, 60)
            feed = client.get("/v1/events", params={"types": "record.anchored"}).json()
            assert len(feed["items"]) == 2
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=30)
        assert worker.returncode == 0, stderr
        assert "Traceback" not in stderr


@pytest.mark.asyncio
async def test_a_second_indexer_stands_by_until_the_first_stops(
    tmp_path: Path, database_url: str, engine: Engine, anvil: LocalNode
) -> None:
    """Two processes' indexers on one journal (here two engines, two runtimes): one indexes,
    one stands by and takes over when the first stops."""
    settings = service_settings(tmp_path, database_url, anvil.rpc_url)
    other_engine = make_engine(database_url)
    first = Runtime(
        settings=settings, engine=engine, session_factory=make_session_factory(engine), only=INDEXER
    )
    second = Runtime(
        settings=settings,
        engine=other_engine,
        session_factory=make_session_factory(other_engine),
        only=INDEXER,
    )

    def indexer(runtime: Runtime) -> dict[str, Any]:
        return dict(runtime.chain_status["indexer"])

    first_running = second_running = False
    try:
        await first.start()
        first_running = True
        # No deployment is recorded in this journal, so the indexer that runs waits for one.
        await until(lambda: indexer(first).get("waiting_for") is not None, timeout=20)
        assert indexer(first)["state"] == "running"
        await second.start()
        second_running = True
        await until(lambda: indexer(second)["state"] == "standby", timeout=20)
        await asyncio.sleep(1.5)
        assert indexer(second)["state"] == "standby"
        assert "indexer lock" in indexer(second)["message"]
        first_running = False
        await first.stop()  # its process stops: the lock frees
        await until(lambda: indexer(second).get("waiting_for") is not None, timeout=20)
        assert indexer(second)["state"] == "running"
    finally:
        if second_running:
            await second.stop()
        if first_running:
            await first.stop()
        other_engine.dispose()
