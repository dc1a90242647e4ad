"""/v1/crm/reconciliation: who may start a run, runs requested for the indexer's process, runs
started in this one, and the stored reports."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.indexer.indexer import Indexer
from crm_ledger.indexer.reconcile import ChainReader, Reconciler, latest_report
from crm_ledger.journal.keys import Role
from tests.api.helpers import checked_out_at_dispose, problem
from tests.apps import TestClient
from tests.crm import factories as f
from tests.waiting import wait_for


class QuietChain:
    """A chain reader for a ledger with nothing anchored."""

    async def ledger_next_seq(self, ledger: str) -> int:
        return 0

    async def token_issued(self, token: str, issuance_id: bytes) -> bool:
        return False

    async def token_balance(self, token: str, holder: str) -> int:
        return 0


class SlowChain(QuietChain):
    """A quiet chain that takes its time to answer."""

    async def ledger_next_seq(self, ledger: str) -> int:
        await asyncio.sleep(0.3)
        return 0


def run_the_indexer_here(
    app: FastAPI, app_sessions: sessionmaker[Session], chain: ChainReader, tmp_path: Path
) -> None:
    """Make the app's process the one that runs the indexer (and so its reconciler)."""
    f.deployments(app_sessions)
    indexing = app.state.runtime.indexing
    assert indexing is not None, "the app runs the indexer by default"
    indexing.indexer = Indexer(
        session_factory=app_sessions,
        source=None,  # type: ignore[arg-type]  # the reconciler is all these tests use
        settings=Settings(_env_file=None, data_dir=tmp_path),  # type: ignore[call-arg]
        reconciler=Reconciler(session_factory=app_sessions, chain=chain),
    )


def test_only_auditors_and_admins_start_runs_and_every_role_reads_them(
    client: TestClient, headers: dict[Role, dict[str, str]]
) -> None:
    problem(client.get("/v1/crm/reconciliation", headers=headers[Role.RECORDER]), 404)
    for role in (Role.RECORDER, Role.MARKETING):
        body = problem(client.post("/v1/crm/reconciliation", headers=headers[role]), 403)
        assert body["allowed_roles"] == ["auditor", "admin"]
    problem(client.post("/v1/crm/reconciliation"), 401)

    started = client.post("/v1/crm/reconciliation", headers=headers[Role.AUDITOR])
    assert started.status_code == 202, started.text
    run: dict[str, Any] = started.json()
    assert run["status"] == "requested" and run["trigger"] == "api"
    assert started.headers["Location"] == f"/v1/crm/reconciliation/{run['id']}"
    # This process runs no indexer: the run waits for the one that does; asking again is
    # harmless.
    again = client.post("/v1/crm/reconciliation", headers=headers[Role.ADMIN])
    assert again.status_code == 202 and again.json()["id"] == run["id"]
    for role in Role:
        latest = client.get("/v1/crm/reconciliation", headers=headers[role])
        assert latest.status_code == 200 and latest.json()["id"] == run["id"]
    by_id = client.get(started.headers["Location"], headers=headers[Role.MARKETING])
    assert by_id.json()["status"] == "requested"
    problem(client.get("/v1/crm/reconciliation/nope", headers=headers[Role.ADMIN]), 422)


def test_a_process_running_the_indexer_runs_it_at_once(
    app: FastAPI,
    client: TestClient,
    app_sessions: sessionmaker[Session],
    headers: dict[Role, dict[str, str]],
    tmp_path: Path,
) -> None:
    run_the_indexer_here(app, app_sessions, QuietChain(), tmp_path)
    started = client.post("/v1/crm/reconciliation", headers=headers[Role.ADMIN])
    assert started.status_code == 202
    run = wait_for(
        lambda: client.get(started.headers["Location"], headers=headers[Role.ADMIN]).json(),
        10,
        until=lambda run: run["status"] == "done",
        what="the reconciliation run to finish",
    )
    assert run["report"]["clean"] is True and run["drift_count"] == 0
    assert run["started_at"] is not None and run["finished_at"] is not None


def test_shutdown_waits_for_a_run_in_progress(
    app: FastAPI,
    app_sessions: sessionmaker[Session],
    headers: dict[Role, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at_dispose = checked_out_at_dispose(app.state.runtime.engine, monkeypatch)
    with TestClient(app) as client:
        run_the_indexer_here(app, app_sessions, SlowChain(), tmp_path)
        started = client.post("/v1/crm/reconciliation", headers=headers[Role.ADMIN])
        assert started.status_code == 202
    assert at_dispose == [0]
    run = latest_report(app_sessions, report_id=started.json()["id"])
    assert run is not None and run["status"] == "done", run
