"""The ingest worker under the supervisor: woken by the webhook, backing off when the database
is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.db.session import make_engine, make_session_factory
from crm_ledger.errors import Unavailable
from crm_ledger.ingest.worker import IngestWorker
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.roles import background_workers
from tests.apps import TestClient
from tests.ingest.conftest import ingest_settings, make_source
from tests.ingest.helpers import deliveries, send_shopify
from tests.ingest.shops import SHOPIFY_SECRET, shopify_order


def test_the_ingest_worker_is_a_background_role_unless_disabled(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path, database_url: str
) -> None:
    names = [w.name for w in background_workers(settings=settings, session_factory=session_factory)]
    assert "ingest" in names
    off = ingest_settings(tmp_path, database_url, run_ingest=False)
    assert "ingest" not in [
        w.name for w in background_workers(settings=off, session_factory=session_factory)
    ]


def test_a_database_that_cannot_be_reached_is_unavailable(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere?connect_timeout=1"
    engine = make_engine(url)
    try:
        worker = IngestWorker(
            settings=ingest_settings(tmp_path, url), session_factory=make_session_factory(engine)
        )
        with pytest.raises(Unavailable, match="deliveries wait"):
            asyncio.run(worker.step())
    finally:
        engine.dispose()


def test_the_webhook_wakes_the_supervised_worker(tmp_path: Path, database_url: str) -> None:
    settings = ingest_settings(tmp_path, database_url, run_ingest=False)
    app = create_app(settings, background=False)
    runtime = app.state.runtime
    factory = runtime.session_factory
    runtime.supervisor.add(
        IngestWorker(settings=settings, session_factory=factory), idle_seconds=30.0
    )
    with TestClient(app) as client:
        with factory.begin() as session:
            key = create_api_key(session, role=Role.ADMIN, label="admin")
        source = make_source(
            client,
            {"Authorization": f"Bearer {key}"},
            platform="shopify",
            name="Lovelace Prints",
            secret=SHOPIFY_SECRET,
        )
        client.portal.call(runtime.supervisor.start)
        try:
            # The worker's first step finds nothing, then it idles for 30 s unless woken.
            client.portal.call(asyncio.sleep, 0.5)
            send_shopify(client, source, "orders/create", shopify_order())
            for _ in range(100):
                if deliveries(factory)[0].status == "mapped":
                    break
                client.portal.call(asyncio.sleep, 0.05)
            assert deliveries(factory)[0].status == "mapped"
        finally:
            client.portal.call(runtime.supervisor.stop)
