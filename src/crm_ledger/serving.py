"""How `crm-ledger serve` runs the service: an API process (or N on one port) and its children.

Exports: `serve`, `api_process_app`, `tune_garbage_collector`, `WorkerProcess`,
`SERVE_LOG_LEVEL_ENV`.

The processes of a default `serve`:

- the API: uvicorn runs the app (`create_app`) here, with the integrations' workers (outbound
  relays and the like);
- the chain workers (`CRM_LEDGER_CHAIN_PROCESS`, on): the anchorer, the indexer and loyalty
  issuance in one child process, `crm-ledger worker chain`, on one chain connection. Their CPU
  (hashing the batches, reading and storing chain events) then does not share the API's one
  interpreter: on a quiet 2-core machine the bulk path went from 46-47 % to 60-63 % of the
  ingest rate end to end, and about a tenth more single writes (docs/benchmarks.md, "session 15");
- the shop-webhook mapper (`CRM_LEDGER_INGEST_PROCESS`, on): `crm-ledger worker ingest`, for
  the same reason (inside `serve`, the webhook path anchored records at half the plain POST's
  rate: docs/benchmarks.md, "Commerce ingest");
- the embedded Anvil, when no RPC URL is set. When any other process needs the chain, `serve`
  starts it itself, once, and every process reaches it by its URL (`CRM_LEDGER_RPC_URL` in
  their environment); with the chain workers inline and one process, the app's chain
  connection starts it, as before.

A child (`WorkerProcess`) is started once the journal is migrated and the keys made, restarted
if it dies (after a pause that doubles up to `RESTART_MAX_SECONDS`), stopped with `serve`
(SIGTERM, then SIGKILL after `STOP_GRACE_SECONDS`), and stops by itself if `serve` dies (its
stdin closes). The API processes then run none of its workers (`CRM_LEDGER_RUN_*=false` for
them).

With N API processes, uvicorn's process manager binds the port once and starts N processes
that accept connections on it (and starts a new one if one dies). Each is the API with the
integrations' workers, each worker a singleton behind its lock (`workers.lock`: a PostgreSQL
advisory lock, a file lock on SQLite): exactly one process runs each, the copies in the others
stand by and take over within a second or so if the holder dies. With the chain process off,
the chain workers are among them, the same way. Before starting them, this process migrates
the database and makes the data directory's key files once (N processes would race to make
them).

Every process `serve` starts shares two directories in the data directory, emptied at start and
removed at stop: `metrics/` (each keeps its Prometheus figures there, and `/metrics` adds them up
whichever process answers: `crm_ledger.metrics`) and `status/` (each publishes its workers'
states there, and `/readyz` shows every process's: `workers.board`).
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from crm_ledger import metrics
from crm_ledger.app import create_app
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.config import Settings
from crm_ledger.db.session import make_engine, upgrade_database
from crm_ledger.journal.privacy import attach_keyring, load_keyring
from crm_ledger.observability.logs import LogFormat, configure_logging
from crm_ledger.runtime import CHAIN_WORKERS
from crm_ledger.workers.board import STATUS_DIR_ENV

log = logging.getLogger(__name__)

#: The log level `serve` passes to its API processes (their settings come from the environment).
SERVE_LOG_LEVEL_ENV = "CRM_LEDGER_SERVE_LOG_LEVEL"
#: How long a worker process has to stop after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0
#: The first and the longest pause before a worker process that exited is started again.
RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# A worker process that ran this long before it exited is restarted after the first pause again.
_RAN_WELL_SECONDS = 60.0
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
    mapper_wanted = settings.run_ingest and settings.ingest_process
    chain_wanted = settings.chain_process and (
        settings.run_anchorer or settings.run_indexer or settings.run_loyalty
    )
    shared = workers > 1 or mapper_wanted or chain_wanted
    with (
        _metrics_directory(settings, shared) as metrics_dir,
        _status_directory(settings, shared) as status_dir,
    ):
        node = None
        children: list[WorkerProcess] = []
        try:
            if workers > 1:
                _prepare(settings)  # one API process: `create_app` does it, before the children
            if chain_wanted or workers > 1:
                # The processes share one node: the one `serve` starts, unless a URL is set.
                node = _start_node(settings)
                if node is not None:
                    settings = settings.model_copy(update={"rpc_url": node.rpc_url})
            env = {
                **os.environ,
                **metrics_dir,
                **status_dir,
                "CRM_LEDGER_DATA_DIR": str(settings.data_dir),
                "CRM_LEDGER_LOG_FORMAT": str(LogFormat(log_format or settings.log_format).value),
            }
            if settings.rpc_url is not None:
                env["CRM_LEDGER_RPC_URL"] = settings.rpc_url
            if mapper_wanted:
                children.append(WorkerProcess("ingest", env=env, log_level=log_level))
                settings = settings.model_copy(update={"run_ingest": False})
            if chain_wanted:
                children.append(WorkerProcess(CHAIN_WORKERS, env=env, log_level=log_level))
                settings = settings.model_copy(
                    update={"run_anchorer": False, "run_indexer": False, "run_loyalty": False}
                )
            os.environ.update(status_dir)  # this process publishes too
            if workers == 1:
                app = create_app(settings)  # migrates and makes the key files first
                if metrics_dir:
                    metrics.collect_children(Path(metrics_dir[metrics.MULTIPROCESS_DIR_ENV]))
                for child in children:
                    child.start()
                tune_garbage_collector()
                with _signals_end_serve():
                    uvicorn.run(app, **options)  # type: ignore[arg-type]
                return
            os.environ.update(metrics_dir)
            _serve_processes(settings, workers, log_level, log_format, children, options)
        finally:
            for child in children:
                child.stop()
            if node is not None:
                node.stop()


@contextmanager
def _shared_directory(
    settings: Settings, wanted: bool, env_name: str, name: str
) -> Iterator[dict[str, str]]:
    """The environment (`env_name`) that points the processes `serve` starts at one directory
    they share: `name` in the data directory, emptied for this run (a `serve` that was killed
    left its files there) and removed after it; `{}` when not `wanted` (one process). A
    directory the operator set in `env_name` is used as it is and kept."""
    if not wanted or env_name in os.environ:
        yield {env_name: os.environ[env_name]} if wanted else {}
        return
    directory = settings.data_dir / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    try:
        yield {env_name: str(directory)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _metrics_directory(settings: Settings, wanted: bool) -> Iterator[dict[str, str]]:
    """Where the processes keep their Prometheus figures (`crm_ledger.metrics`): `metrics/`,
    or the operator's `PROMETHEUS_MULTIPROC_DIR`."""
    try:
        with _shared_directory(settings, wanted, metrics.MULTIPROCESS_DIR_ENV, "metrics") as env:
            yield env
    finally:
        metrics.collect_children(None)


@contextmanager
def _status_directory(settings: Settings, wanted: bool) -> Iterator[dict[str, str]]:
    """Where the processes publish their workers' states, so that `/readyz` shows every
    process's (`workers.board`): `status/`, or the operator's `CRM_LEDGER_STATUS_DIR` (shared
    with workers they run themselves)."""
    with _shared_directory(settings, wanted, STATUS_DIR_ENV, "status") as env:
        yield env


def _serve_processes(
    settings: Settings,
    workers: int,
    log_level: str,
    log_format: LogFormat | None,
    children: list[WorkerProcess],
    options: dict[str, object],
) -> None:
    """`serve --workers N`: uvicorn's process manager, N API processes on the port (the
    database migrated and the node started already)."""
    os.environ.update(
        {
            "CRM_LEDGER_DATA_DIR": str(settings.data_dir),
            "CRM_LEDGER_LOG_FORMAT": str(LogFormat(log_format or settings.log_format).value),
            SERVE_LOG_LEVEL_ENV: log_level,
        }
    )
    for name, run in (
        ("CRM_LEDGER_RUN_INGEST", settings.run_ingest),
        ("CRM_LEDGER_RUN_ANCHORER", settings.run_anchorer),
        ("CRM_LEDGER_RUN_INDEXER", settings.run_indexer),
        ("CRM_LEDGER_RUN_LOYALTY", settings.run_loyalty),
    ):
        if not run:
            os.environ[name] = "false"
    if settings.rpc_url is not None:
        os.environ["CRM_LEDGER_RPC_URL"] = settings.rpc_url
    for child in children:
        child.start()
    with _signals_end_serve():
        uvicorn.run(
            "crm_ledger.serving:api_process_app",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=HEALTH_CHECK_SECONDS,
            **options,  # type: ignore[arg-type]
        )


@contextmanager
def _signals_end_serve() -> Iterator[None]:
    """Make SIGINT and SIGTERM end `serve` by returning from `uvicorn.run`, exit status 0.

    uvicorn handles them itself (a graceful shutdown), then raises the signal again once it
    has stopped, for the handler that was there before: the default one would end the process
    at once, before `serve` stops what it started (its child processes, Anvil).
    """
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(signum: int, _frame: object) -> None:
    log.info("serve stopped by %s", signal.Signals(signum).name)


class WorkerProcess:
    """`crm-ledger worker NAME` as a child process: restarted if it exits, until `stop`.

    The child's stdin is a pipe from this process: when this process dies, however it dies,
    the pipe closes and the child stops (`crm-ledger worker NAME --with-parent`).
    """

    def __init__(self, name: str, *, env: dict[str, str], log_level: str = "info") -> None:
        self.name = name
        self._command = [
            sys.executable,
            "-m",
            "crm_ledger.cli",
            "worker",
            name,
            "--log-level",
            log_level,
            "--with-parent",
        ]
        self._env = env
        self._stopping = threading.Event()
        self._mutex = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name=f"{name}-process")
        #: How many times the child was started again after it exited.
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        with self._mutex:
            process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        """Start the child, and the thread that starts it again whenever it exits."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the child (SIGTERM, SIGKILL after `STOP_GRACE_SECONDS`) and its supervision."""
        self._stopping.set()
        with self._mutex:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("the %s worker process did not stop in time: killed", self.name)
                process.kill()
                process.wait()
        if self._thread.is_alive():
            self._thread.join()

    def _supervise(self) -> None:
        pause = RESTART_FIRST_SECONDS
        while True:
            with self._mutex:
                if self._stopping.is_set():
                    return
                self._process = process = subprocess.Popen(
                    self._command, env=self._env, stdin=subprocess.PIPE
                )
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _RAN_WELL_SECONDS:
                pause = RESTART_FIRST_SECONDS
            log.warning(
                "the %s worker process exited (code %s); starting it again in %.1f s",
                self.name,
                code,
                pause,
            )
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, RESTART_MAX_SECONDS)
            self.restarts += 1


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
