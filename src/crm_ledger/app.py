"""FastAPI application factory; the lifespan runs the chain node, the anchorer and the indexer.

Usage: `create_app(settings)` for the service, `create_app(settings, background=False)` in
tests that drive the API without a chain.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from crm_ledger.api.group_commit import close_committers
from crm_ledger.api.idempotency import configure_retention
from crm_ledger.config import Settings, get_settings
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.privacy import attach_keyring, load_keyring
from crm_ledger.runtime import Runtime

#: Where the API keeps the runs it starts in the background, each a set of tasks in `app.state`:
#: ledger audits (`POST /v1/audit/ledger`) and reconciliations (`POST /v1/crm/reconciliation`).
_BACKGROUND_RUNS = ("audit_tasks", "reconciliation_tasks")


def create_app(settings: Settings | None = None, *, background: bool = True) -> FastAPI:
    """Build the service. `background=False` skips the chain node, anchorer and indexer."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    # Personal data (issue 10): the master key before the migrations (0007 seals old rows).
    attach_keyring(engine, load_keyring(settings))
    configure_retention(
        engine,
        retention_hours=settings.idempotency_retention_hours,
        interval_seconds=settings.idempotency_prune_interval_seconds,
    )
    if settings.auto_migrate:
        upgrade_database(engine)
    runtime = Runtime(
        settings=settings, engine=engine, session_factory=make_session_factory(engine)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if background:
            await runtime.start()
        try:
            yield
        finally:
            await _finish_background_runs(app)
            await runtime.stop()
            close_committers(engine)
            engine.dispose()

    app = FastAPI(
        title="crm-ledger",
        version="0.1.0",
        summary="A customer ledger anchored on an EVM chain: durable, verifiable, erasable.",
        lifespan=lifespan,
        # /docs is served from package files by `api.docs` (FastAPI's loads a CDN); no ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    from crm_ledger.api import install

    install(app)
    return app


async def _finish_background_runs(app: FastAPI) -> None:
    """Wait until the runs the API started in the background have ended.

    A run reads and writes the database in worker threads. Disposing the engine under one would
    leave the connection it holds to be returned to a pool nobody closes, open until the garbage
    collector finds it. Cancelling would not help: it stops the awaiting task, not the thread.
    """
    runs = [run for name in _BACKGROUND_RUNS for run in getattr(app.state, name, ())]
    await asyncio.gather(*runs, return_exceptions=True)
