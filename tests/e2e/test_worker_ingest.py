"""`crm-ledger worker ingest`: the mapper as a process of its own, beside a service that runs
none (`CRM_LEDGER_RUN_INGEST=false`); killed with SIGKILL mid-run it loses nothing and maps
nothing twice; SIGTERM stops it with 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.app import create_app
from crm_ledger.db.models import IngestDelivery, IngestOrder, Record
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.ledger.leaf import RecordKind
from tests.e2e.conftest import TestClient, wait_for
from tests.ingest.conftest import TEST_MASTER_KEY, ingest_settings, make_source, webhook_path
from tests.ingest.shops import SHOPIFY_SECRET, body_of, shopify_headers, shopify_order

CLI = Path(sys.executable).parent / "crm-ledger"
DELIVERIES = 150


def _counts(factory: sessionmaker[Session]) -> tuple[int, int, int]:
    """Deliveries mapped, orders known, order records written."""
    with factory() as session:
        mapped = session.scalar(select(func.count()).where(IngestDelivery.status == "mapped"))
        orders = session.scalar(select(func.count()).select_from(IngestOrder))
        records = session.scalar(select(func.count()).where(Record.kind == int(RecordKind.ORDER)))
    return int(mapped or 0), int(orders or 0), int(records or 0)


def _mapped(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(
            session.scalar(select(func.count()).where(IngestDelivery.status == "mapped")) or 0
        )


def _start_worker(tmp_path: Path, database_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "CRM_LEDGER_DATA_DIR": str(tmp_path / "worker"),
        "CRM_LEDGER_DATABASE_URL": database_url,
        "CRM_LEDGER_MASTER_KEY": TEST_MASTER_KEY,
        # Small steps, so a kill lands between two of them.
        "CRM_LEDGER_INGEST_BATCH_SIZE": "1",
        "CRM_LEDGER_RUN_INGEST": "false",  # the setting that keeps it out of `serve`
    }
    return subprocess.Popen(
        [str(CLI), "worker", "ingest", "--log-level", "warning"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_worker_ingest_maps_what_the_service_stores_and_survives_a_kill(
    tmp_path: Path, database_url: str
) -> None:
    settings = ingest_settings(tmp_path, database_url, run_ingest=False)
    app = create_app(settings)
    factory: sessionmaker[Session] = app.state.runtime.session_factory
    with TestClient(app) as client:
        assert "ingest" not in client.get("/readyz").json()["chain"]["workers"]
        with factory.begin() as session:
            admin = {"Authorization": "Bearer " + create_api_key(session, role=Role.ADMIN)}
        source = make_source(
            client, admin, platform="shopify", name="Lovelace Prints", secret=SHOPIFY_SECRET
        )
        for n in range(DELIVERIES):
            body = body_of(shopify_order(id=820_982_911_946_154_000 + n, name=f"#{2000 + n}"))
            answer = client.post(
                webhook_path(source), content=body, headers=shopify_headers(body, "orders/create")
            )
            assert answer.status_code == 200, answer.text
        time.sleep(0.3)
        assert _counts(factory) == (0, 0, 0)  # nothing maps them inside the service

        worker = _start_worker(tmp_path, database_url)
        try:
            deadline = time.monotonic() + 60
            while _mapped(factory) == 0 and time.monotonic() < deadline:
                pass  # no sleep: the kill must land within the first few steps
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=30)
        mapped_at_kill = _counts(factory)[0]
        assert 0 < mapped_at_kill < DELIVERIES, "the kill should land mid-run"

        worker = _start_worker(tmp_path, database_url)
        try:
            wait_for(lambda: _counts(factory)[0] == DELIVERIES, 60)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=30)
        assert worker.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert _counts(factory) == (DELIVERIES, DELIVERIES, DELIVERIES)
