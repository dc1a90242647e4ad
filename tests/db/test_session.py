"""SQLite transactions: writers queue first come first served, readers never wait for them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.transaction import read_only, transaction
from crm_ledger.db import session as db_session
from crm_ledger.db.session import (
    ProcessWriteLock,
    WriteQueue,
    make_engine,
    make_session_factory,
    process_write_lock,
    write_queue,
)
from tests.waiting import wait_for

WAIT = 10.0


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def sessions(sqlite_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(sqlite_engine)


def _queue(engine: Engine) -> WriteQueue:
    queue = write_queue(engine)
    assert queue is not None
    return queue


def _wait_for_waiters(queue: WriteQueue, n: int) -> None:
    wait_for(lambda: queue.waiting >= n, 10, what=f"{n} writers in the queue", interval=0.005)


def _count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session, read_only(session):
        return int(session.execute(text("SELECT count(*) FROM t")).scalar_one())


# The queue on its own --------------------------------------------------------------------------


def test_queue_hands_over_in_arrival_order() -> None:
    queue = WriteQueue()
    assert queue.acquire(WAIT)
    order: list[int] = []

    def waiter(n: int) -> None:
        assert queue.acquire(WAIT)
        order.append(n)
        queue.release()

    threads = []
    for n in range(5):
        thread = threading.Thread(target=waiter, args=(n,))
        thread.start()
        _wait_for_waiters(queue, n + 1)
        threads.append(thread)
    queue.release()
    for thread in threads:
        thread.join(WAIT)
    assert order == [0, 1, 2, 3, 4]


def test_a_releasing_thread_cannot_barge_ahead_of_a_waiter() -> None:
    queue = WriteQueue()
    assert queue.acquire(WAIT)
    got_in = threading.Event()

    def waiter() -> None:
        assert queue.acquire(WAIT)
        got_in.set()
        queue.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    _wait_for_waiters(queue, 1)
    queue.release()
    # Straight back in line: the waiter already owns the queue, so this waits for it.
    assert queue.acquire(WAIT)
    assert got_in.is_set()
    queue.release()
    thread.join(WAIT)


def test_a_timed_out_waiter_leaves_the_line() -> None:
    queue = WriteQueue()
    assert queue.acquire(WAIT)
    assert queue.acquire(0.01) is False
    assert queue.waiting == 0
    queue.release()
    assert queue.acquire(0.01)
    queue.release()


# On a SQLite engine ----------------------------------------------------------------------------


def test_a_reader_does_not_wait_for_a_writer(sessions: sessionmaker[Session]) -> None:
    with sessions() as writer, transaction(writer):
        writer.execute(text("INSERT INTO t VALUES (1)"))
        writer.flush()
        # The writer holds SQLite's write lock and the queue; a reader in another thread
        # sees the last committed snapshot at once (it would block for 30 s otherwise).
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(_count(sessions)))
        thread.start()
        thread.join(WAIT)
        assert result == [0]
    assert _count(sessions) == 1


def test_a_reader_takes_no_place_in_the_queue(
    sqlite_engine: Engine, sessions: sessionmaker[Session]
) -> None:
    queue = _queue(sqlite_engine)
    with sessions() as session, read_only(session):
        session.execute(text("SELECT 1"))
        assert queue.acquire(0.01)
        queue.release()


def test_writers_queue_and_each_commit_or_rollback_frees_the_queue(
    sqlite_engine: Engine, sessions: sessionmaker[Session]
) -> None:
    queue = _queue(sqlite_engine)
    second_done = threading.Event()

    def second_writer() -> None:
        with sessions() as session, transaction(session):
            session.execute(text("INSERT INTO t VALUES (2)"))
        second_done.set()

    with sessions() as session, transaction(session):
        session.execute(text("INSERT INTO t VALUES (1)"))
        thread = threading.Thread(target=second_writer)
        thread.start()
        _wait_for_waiters(queue, 1)
        assert not second_done.is_set()
    thread.join(WAIT)
    assert second_done.is_set()
    assert _count(sessions) == 2

    with pytest.raises(RuntimeError), sessions() as session, transaction(session):
        session.execute(text("INSERT INTO t VALUES (3)"))
        raise RuntimeError("handler failed")
    assert _count(sessions) == 2
    assert queue.acquire(0.01), "a rolled-back transaction kept the queue"
    queue.release()


def test_a_session_closed_mid_transaction_frees_the_queue(
    sqlite_engine: Engine, sessions: sessionmaker[Session]
) -> None:
    queue = _queue(sqlite_engine)
    session = sessions()
    session.execute(text("INSERT INTO t VALUES (1)"))  # autobegins a write transaction
    session.close()
    assert queue.acquire(0.01)
    queue.release()
    assert _count(sessions) == 0


def test_an_invalidated_connection_frees_the_queue(sqlite_engine: Engine) -> None:
    queue = _queue(sqlite_engine)
    conn = sqlite_engine.connect()
    conn.begin()
    conn.execute(text("INSERT INTO t VALUES (1)"))
    conn.invalidate()
    conn.close()
    assert queue.acquire(0.01)
    queue.release()


def test_a_busy_writer_cannot_starve_another(sessions: sessionmaker[Session]) -> None:
    """One thread commits back to back (the group committer under load); another thread's
    write (the anchorer's) gets in right after the transaction it arrived behind."""
    commits = 0
    stop = threading.Event()
    started = threading.Event()

    def busy() -> None:
        nonlocal commits
        while not stop.is_set() and commits < 10_000:
            with sessions() as session, transaction(session):
                session.execute(text("INSERT INTO t VALUES (0)"))
            commits += 1
            started.set()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        assert started.wait(WAIT)
        arrived = commits
        with sessions() as session, transaction(session):
            got_in = commits
            session.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        stop.set()
        thread.join(WAIT)
    assert got_in - arrived <= 2


def test_postgresql_engines_have_no_queue(engine: Engine) -> None:
    assert (write_queue(engine) is None) == (engine.dialect.name == "postgresql")


def test_a_read_only_transaction_sees_one_snapshot(engine: Engine) -> None:
    """Every statement of a read sees the state of its first: a commit in between is not
    half-visible (PostgreSQL's default READ COMMITTED would show it to the second statement)."""
    sessions = make_session_factory(engine)
    with sessions() as session, transaction(session):
        session.execute(text("CREATE TABLE snap (n INTEGER)"))
    with sessions() as reader, read_only(reader):
        first = reader.execute(text("SELECT count(*) FROM snap")).scalar_one()
        done = threading.Event()

        def write() -> None:
            with sessions() as writer, transaction(writer):
                writer.execute(text("INSERT INTO snap VALUES (1)"))
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        thread.join(WAIT)
        assert done.is_set(), "the writer waited for the reader"
        assert reader.execute(text("SELECT count(*) FROM snap")).scalar_one() == first == 0
    with sessions() as reader, read_only(reader):
        assert reader.execute(text("SELECT count(*) FROM snap")).scalar_one() == 1


def test_a_read_only_transaction_refuses_writes_on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no read-only transactions; handlers only read in them")
    sessions = make_session_factory(engine)
    with pytest.raises(DBAPIError, match="read-only"), sessions() as s, read_only(s):
        s.execute(text("CREATE TABLE nope (n INTEGER)"))


# The WAL file ------------------------------------------------------------------------------------


def test_the_wal_file_shrinks_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_session, "WAL_SIZE_LIMIT_BYTES", 64 * 1024)
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.sqlite'}")
    wal = tmp_path / "wal.sqlite-wal"
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (n INTEGER, pad BLOB)"))
        # A reader on an old snapshot: no checkpoint can rewind the WAL while it reads.
        reader = sqlite3.connect(tmp_path / "wal.sqlite", isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()
        for n in range(40):
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:n, randomblob(50000))"), {"n": n})
        grown = wal.stat().st_size
        reader.execute("COMMIT")
        reader.execute("PRAGMA wal_checkpoint(PASSIVE)")
        reader.close()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (-1, NULL)"))  # rewinds the WAL
        after = wal.stat().st_size  # (the last connection to close deletes the file)
    finally:
        engine.dispose()

    assert grown > 1_000_000
    assert after <= 64 * 1024


# Between processes: the flock beside the database ---------------------------------------------


def _process_lock(engine: Engine) -> ProcessWriteLock:
    lock = process_write_lock(engine)
    assert lock is not None
    return lock


def test_the_process_lock_excludes_every_other_holder(tmp_path: Path) -> None:
    """Two `ProcessWriteLock`s of one file are two open file descriptions: as for two
    processes, one holder at a time."""
    first = ProcessWriteLock(str(tmp_path / "db-writer.lock"))
    second = ProcessWriteLock(str(tmp_path / "db-writer.lock"))

    assert first.acquire(0.01)
    assert not second.acquire(0.05)
    first.release()
    assert second.acquire(0.01)
    second.release()
    first.close()
    second.close()


def test_a_write_of_another_engine_waits_on_the_process_lock(tmp_path: Path) -> None:
    """Two engines on one file stand for two processes: while one writes, the other's write
    waits, and it goes in once the first commits or rolls back; each frees the lock."""
    path = tmp_path / "shared.sqlite"
    one, other = make_engine(f"sqlite:///{path}"), make_engine(f"sqlite:///{path}")
    try:
        with one.begin() as conn:
            conn.execute(text("CREATE TABLE t (n INTEGER)"))
        assert _process_lock(one).path == f"{path}-writer.lock"
        others = make_session_factory(other)
        done = threading.Event()

        def write_in_other() -> None:
            with others() as session, transaction(session):
                session.execute(text("INSERT INTO t VALUES (2)"))
            done.set()

        with one.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            thread = threading.Thread(target=write_in_other)
            thread.start()
            assert not done.wait(0.2)
            outsider = ProcessWriteLock(f"{path}-writer.lock")
            assert not outsider.acquire(0.01)
            outsider.close()
        thread.join(WAIT)
        assert done.is_set()
        assert _count(others) == 2

        with pytest.raises(RuntimeError), one.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (3)"))
            raise RuntimeError("rolled back")
        free = ProcessWriteLock(f"{path}-writer.lock")
        assert free.acquire(0.01), "a commit or rollback kept the process lock"
        free.release()
        free.close()
    finally:
        one.dispose()
        other.dispose()


def test_a_killed_holder_blocks_no_one(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from sqlalchemy import text\n"
            "from crm_ledger.db.session import make_engine\n"
            f"engine = make_engine({f'sqlite:///{path}'!r})\n"
            "conn = engine.connect(); conn.begin()\n"
            "conn.execute(text('INSERT INTO t VALUES (9)'))\n"
            "print('held', flush=True); time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        outsider = ProcessWriteLock(f"{path}-writer.lock")
        assert not outsider.acquire(0.05)
        outsider.close()
        holder.kill()
        holder.wait(WAIT)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert conn.execute(text("SELECT n FROM t")).scalars().all() == [1]
    finally:
        holder.kill()
        holder.wait(WAIT)
        if holder.stdout is not None:
            holder.stdout.close()
        engine.dispose()
