"""How `crm-ledger serve` runs the service: one process, or N API processes on one port.

Exports: `serve`, `api_process_app`, `tune_garbage_collector`, `SERVE_LOG_LEVEL_ENV`.

With one process (the default) uvicorn runs the app here, and the app starts the embedded Anvil
itself when no RPC URL is set. With N, uvicorn's process manager binds the port once and starts
N processes that accept connections on it (and starts a new one if one dies). Each process is
the whole service (`create_app`): API, and every background worker, but each worker is a
singleton behind its lock (`workers.lock`: a PostgreSQL advisory lock, a file lock on SQLite),
so exactly one process runs the anchorer, one the indexer, one loyalty issuance and so on; the
copies in the other processes stand by (`standby` in `/readyz`) and take over within a second or
so if the holder dies. Before starting them, this process migrates the database and makes the
data directory's key files once (N processes would race to make them), and starts the embedded
Anvil once, which the processes reach by its URL (`CRM_LEDGER_RPC_URL` in their environment).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from crm_ledger.app import create_app
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.config import Settings
from crm_ledger.db.session import make_engine, upgrade_database
from crm_ledger.journal.privacy import attach_keyring, load_keyring
from crm_ledger.observability.logs import LogFormat, configure_logging

#: The log level `serve` passes to its API processes (their settings come from the environment).
SERVE_LOG_LEVEL_ENV = "CRM_LEDGER_SERVE_LOG_LEVEL"
# How long uvicorn gives an API process to answer its health check. A new process imports the
# whole service (web3 included) before its first answer: seconds on a loaded machine, and
# uvicorn's default of 5 s had it kill and replace processes that were still starting.
HEALTH_CHECK_SECONDS = 60
#: Allocations between two collections of the youngest generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Tune CPython's cyclic garbage collector for a long-running service process.

    A request, a log line or a chain event allocates many small objects that reference
    counting frees at once, yet each one counts towards the collector's threshold: with the
    default of 700 it ran about 150 times while the indexer stored 5,000 chain events, and took
    a third of that phase's CPU scanning objects that were not garbage
    (scripts/bench_indexer.py, docs/benchmarks.md). So the collector runs every
    `GC_YOUNG_THRESHOLD` allocations, and what startup built (modules, classes, the app,
    settings), which lives as long as the process, is frozen out of every collection
    (`gc.freeze`). Cycles are still collected, just in larger steps. For the processes `serve`
    and `crm-ledger worker` run, not for a library user's process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_format: LogFormat | None,
    tls: tuple[Path, Path] | None,
) -> None:
    """Serve until SIGINT/SIGTERM with `workers` API processes (see the module docstring)."""
    options = {
        "host": host,
        "port": port,
        "log_level": log_level,
        # Our handler formats uvicorn's lines too; the access lines come from
        # `RequestLogMiddleware`, with the request id.
        "log_config": None,
        "access_log": False,
        "ssl_certfile": str(tls[0]) if tls else None,
        "ssl_keyfile": str(tls[1]) if tls else None,
    }
    configure_logging(level=log_level, log_format=log_format or settings.log_format)
    if workers == 1:
        app = create_app(settings)
        tune_garbage_collector()
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return
    _prepare(settings)
    node = _start_node(settings)
    os.environ.update(
        {
            "CRM_LEDGER_DATA_DIR": str(settings.data_dir),
            "CRM_LEDGER_LOG_FORMAT": str(LogFormat(log_format or settings.log_format).value),
            SERVE_LOG_LEVEL_ENV: log_level,
        }
    )
    if node is not None:
        os.environ["CRM_LEDGER_RPC_URL"] = node.rpc_url
    try:
        uvicorn.run(
            "crm_ledger.serving:api_process_app",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=HEALTH_CHECK_SECONDS,
            **options,  # type: ignore[arg-type]
        )
    finally:
        if node is not None:
            node.stop()


def api_process_app() -> FastAPI:
    """The app of one API process of `serve --workers N` (uvicorn calls this in each)."""
    settings = Settings()
    configure_logging(
        level=os.environ.get(SERVE_LOG_LEVEL_ENV, "info"), log_format=settings.log_format
    )
    app = create_app(settings)
    tune_garbage_collector()
    return app


def _prepare(settings: Settings) -> None:
    """Migrate the database and make the key files, once, before the processes start."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
    )
    try:
        attach_keyring(engine, load_keyring(settings))
        if settings.auto_migrate:
            upgrade_database(engine)
    finally:
        engine.dispose()


def _start_node(settings: Settings) -> LocalNode | None:
    """The embedded Anvil (as `chain.connection` starts it), unless an RPC URL is set."""
    if settings.rpc_url is not None:
        return None
    return start_anvil(
        port=settings.anvil_port,
        state_path=settings.data_dir / "anvil-state.json",
        binary=settings.anvil_bin,
    )
