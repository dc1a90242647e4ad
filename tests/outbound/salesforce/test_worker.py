"""The `salesforce` worker under the supervisor: backs off while Salesforce is down, catches up,
halts with a message when its settings are missing; and its registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.outbound.salesforce.standin import SalesforceStandIn
from crm_ledger.outbound.salesforce.worker import SalesforceSyncWorker
from crm_ledger.roles import background_workers
from crm_ledger.workers import Supervisor, WorkerState
from tests.outbound.salesforce.conftest import CLIENT_ID, USERNAME, KeyPair, add_customers
from tests.waiting import until


def _settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "run_salesforce_sync": True,
        "salesforce_client_id": CLIENT_ID,
        "salesforce_username": USERNAME,
        "salesforce_poll_seconds": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.mark.asyncio
async def test_backs_off_while_salesforce_is_down_then_catches_up(
    engine: Engine,
    database_url: str,
    session_factory: sessionmaker[Session],
    standin: SalesforceStandIn,
    key_pair: KeyPair,
    tmp_path: Path,
) -> None:
    ids = add_customers(session_factory, 25)
    key_file = tmp_path / "sf.pem"
    key_file.write_bytes(key_pair.private_pem)
    settings = _settings(
        tmp_path,
        database_url,
        salesforce_login_url=standin.base_url,
        salesforce_private_key_path=key_file,
    )
    (worker,) = background_workers(
        settings=settings, session_factory=session_factory, only="salesforce"
    )
    assert isinstance(worker, SalesforceSyncWorker)
    standin.available = False
    supervisor = Supervisor(engine=engine, idle_seconds=0.05, max_backoff_seconds=0.2)
    supervisor.add(worker)
    await supervisor.start()
    try:
        await until(
            lambda: supervisor.status()["salesforce"]["state"] == WorkerState.BACKING_OFF.value
        )
        assert "503" in supervisor.status()["salesforce"]["message"]
        standin.available = True
        await until(lambda: len(standin.contacts) == 25, 20)
        await until(
            lambda: (
                supervisor.status()["salesforce"]["state"] == WorkerState.RUNNING.value
                and supervisor.status()["salesforce"]["failures_in_a_row"] == 0
            )
        )
    finally:
        await supervisor.stop()
    assert sorted(standin.contacts) == sorted(ids)


@pytest.mark.asyncio
async def test_missing_settings_halt_it_naming_them(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, database_url, salesforce_username=None)
    (worker,) = background_workers(
        settings=settings,
        session_factory=sessionmaker(engine),
        only="salesforce",
    )
    supervisor = Supervisor(engine=engine, idle_seconds=0.05, max_backoff_seconds=0.2)
    supervisor.add(worker)
    await supervisor.start()
    try:
        await until(lambda: supervisor.status()["salesforce"]["state"] == WorkerState.HALTED.value)
        message = supervisor.status()["salesforce"]["message"]
    finally:
        await supervisor.stop()
    assert "CRM_LEDGER_SALESFORCE_USERNAME" in message
    assert "CRM_LEDGER_SALESFORCE_PRIVATE_KEY_PATH" in message


def test_not_run_unless_enabled(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert not settings.run_salesforce_sync
    assert (
        background_workers(settings=settings, session_factory=sessionmaker(), only="salesforce")
        == []
    )
