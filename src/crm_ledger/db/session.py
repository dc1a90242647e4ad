"""Engine and session factory; SQLite is tuned for a durable single-file journal.

Exports: `make_engine`, `make_session_factory`, `upgrade_database`, `reading`, `READ_ONLY`,
`WriteQueue`, `write_queue`, `ProcessWriteLock`, `process_write_lock`.

SQLite has one write lock. A transaction that finds it taken waits in SQLite's busy handler,
which sleeps for milliseconds at a time and hands the lock to whoever asks at the right moment:
under steady writes a background worker (the anchorer, the indexer) can lose that race for
seconds. So this process's write transactions on one engine first queue, first come first
served, on the engine's `WriteQueue`, which hands the database to the next one the moment the
previous one commits or rolls back. Between processes on one database file (`serve --workers
N`, the ingest mapper's process, `crm-ledger worker`), the one at the head of each queue then
takes a `ProcessWriteLock`, an exclusive `flock` on a file beside the database, which it polls
every 0.1 to 1 ms: SQLite's busy handler sleeps 1, 2, 5, 10 ... up to 100 ms between tries, so
a write of one process waiting behind another's waited up to a hundred times longer than the
lock was held. The kernel drops a dead process's `flock`, so a killed holder blocks nobody.

Read-only transactions (the `READ_ONLY` execution option, set by `api.transaction.read_only` for
handlers and by `reading` for background workers' polls) skip the queue and begin deferred:
in WAL mode they read a snapshot while writers carry on.
PostgreSQL needs none of this.

The WAL file: SQLite checkpoints it into the database every 1,000 pages, but it starts writing
it from the top again only when a checkpoint finished while no reader was still on it, and it
never gives back the space it grew to. Under steady writes with readers always somewhere in it
(the soak benchmark, docs/benchmarks.md) it grows; `journal_size_limit` truncates it back to
`WAL_SIZE_LIMIT_BYTES` each time it is rewound.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

#: Execution option: this transaction only reads (SQLite: deferred BEGIN, no write queue).
READ_ONLY = "crm_ledger_read_only"
#: How long a write transaction waits for its turn before going on to SQLite's own busy wait.
QUEUE_TIMEOUT_SECONDS = 30.0
#: The size SQLite truncates the WAL file back to once it has been checkpointed and rewound.
WAL_SIZE_LIMIT_BYTES = 64 * 2**20
# Set in a pooled connection's info while its transaction holds the queue / the process lock.
_HOLDS_QUEUE = "crm_ledger_holds_write_queue"
_HOLDS_PROCESS_LOCK = "crm_ledger_holds_process_write_lock"


@contextmanager
def reading(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a read-only transaction, closed on exit: what a worker's poll should use,
    so that on SQLite it neither queues for nor holds the write lock the API's writers need."""
    with session_factory() as session, session.begin():
        session.connection(execution_options={READ_ONLY: True})
        yield session


class WriteQueue:
    """A first-come-first-served lock, so a thread that just released it cannot barge back
    in ahead of threads already waiting (a plain `threading.Lock` lets it)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiting: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        """Wait for this caller's turn; False if `timeout` seconds pass first."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        if turn.acquire(timeout=timeout):
            return True
        with self._mutex:
            if turn in self._waiting:
                self._waiting.remove(turn)
                return False
        # `release` handed the queue over just as the wait timed out: it is ours.
        return True

    def release(self) -> None:
        """Hand the lock to the longest waiter, or free it."""
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._held = False

    @property
    def waiting(self) -> int:
        """How many callers wait for their turn."""
        return len(self._waiting)


class ProcessWriteLock:
    """An exclusive `flock` on `path`, shared by every process (and engine) writing to one
    SQLite file; see the module docstring. Its file descriptor is opened per process (a forked
    child sharing its parent's would share its lock too)."""

    #: First and longest pause between two tries while another process holds the lock.
    FIRST_PAUSE_SECONDS = 0.0001
    MAX_PAUSE_SECONDS = 0.001

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def acquire(self, timeout: float) -> bool:
        """Take the lock; False if another process still holds it after `timeout` seconds."""
        fd = self._descriptor()
        deadline = time.monotonic() + timeout
        pause = self.FIRST_PAUSE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, self.MAX_PAUSE_SECONDS)

    def release(self) -> None:
        """Let the next process in."""
        fd = self._fd
        if fd is not None and self._pid == os.getpid():
            # Closed meanwhile (the engine disposed under a transaction) unlocks it too.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file (a later `acquire` opens it again); the engine's dispose calls it."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """Engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and a write queue."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            # Bound values (names, e-mails...) never appear in an error message or log line.
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when transactions begin (pysqlite's own
            # implicit BEGIN breaks SAVEPOINT and isolation; see SQLAlchemy's pysqlite notes).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            cursor.close()

        database = engine.url.database
        on_disk = bool(database) and database != ":memory:" and "mode=memory" not in url
        lock = ProcessWriteLock(f"{database}-writer.lock") if on_disk else None
        _install_write_queue(engine, lock)
        return engine
    return create_engine(
        url, pool_size=10, max_overflow=20, pool_pre_ping=True, hide_parameters=True
    )


def write_queue(engine: Engine) -> WriteQueue | None:
    """The engine's write queue (SQLite engines made by `make_engine`), else None."""
    queue = getattr(engine, "_crm_ledger_write_queue", None)
    return queue if isinstance(queue, WriteQueue) else None


def process_write_lock(engine: Engine) -> ProcessWriteLock | None:
    """The engine's lock between processes (SQLite files opened by `make_engine`), else None."""
    lock = getattr(engine, "_crm_ledger_process_lock", None)
    return lock if isinstance(lock, ProcessWriteLock) else None


def _install_write_queue(engine: Engine, process_lock: ProcessWriteLock | None) -> None:
    queue = WriteQueue()
    engine._crm_ledger_write_queue = queue  # type: ignore[attr-defined]
    engine._crm_ledger_process_lock = process_lock  # type: ignore[attr-defined]
    if process_lock is not None:
        event.listen(engine, "engine_disposed", lambda _engine: process_lock.close())

    def release(info: dict[Any, Any] | None) -> None:
        if info is None:
            return
        if info.pop(_HOLDS_PROCESS_LOCK, False) and process_lock is not None:
            process_lock.release()
        if info.pop(_HOLDS_QUEUE, False):
            queue.release()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        info = conn.connection.info
        info[_HOLDS_QUEUE] = queue.acquire(QUEUE_TIMEOUT_SECONDS)
        try:
            if process_lock is not None:
                # Past the timeout, SQLite's own busy wait still decides (as without the lock).
                info[_HOLDS_PROCESS_LOCK] = process_lock.acquire(QUEUE_TIMEOUT_SECONDS)
            # IMMEDIATE takes the write lock up front, so two writers (in different processes)
            # queue on busy_timeout instead of one failing with "database is locked" when it
            # upgrades its lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            release(info)
            raise

    # The transaction ends in the dialect's commit or rollback (the pool's reset on return
    # included); a connection invalidated or closed mid-transaction ends it too.
    dialect = engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def commit_then_release(dbapi_connection: Any) -> None:
        try:
            do_commit(dbapi_connection)
        finally:
            release(_pool_info(dbapi_connection))

    def rollback_then_release(dbapi_connection: Any) -> None:
        try:
            do_rollback(dbapi_connection)
        finally:
            release(_pool_info(dbapi_connection))

    dialect.do_commit = commit_then_release  # type: ignore[method-assign]
    dialect.do_rollback = rollback_then_release  # type: ignore[method-assign]

    @event.listens_for(engine, "invalidate")
    @event.listens_for(engine, "close")
    def _ended(_dbapi_connection: Any, record: Any, *_: Any) -> None:
        release(record.info)


def _pool_info(connection: Any) -> dict[Any, Any] | None:
    """The pooled connection's info; None for the bare or ad-hoc connections SQLAlchemy's
    first-connect check rolls back (they never begin a transaction of ours)."""
    try:
        info = connection.info
    except (AttributeError, NotImplementedError):
        return None
    return info if isinstance(info, dict) else None


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("crm_ledger.db") / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(engine: Engine) -> None:
    """Apply every pending migration (idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
