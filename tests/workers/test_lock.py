"""One worker of each role per journal: the second one waits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from crm_ledger.db.session import make_engine
from crm_ledger.workers.lock import SingletonLock
from tests.conftest import POSTGRES_URL


def test_second_holder_is_refused_until_the_first_releases(engine: Engine) -> None:
    other_engine = make_engine(engine.url.render_as_string(hide_password=False))
    first, second = SingletonLock(engine), SingletonLock(other_engine)
    try:
        assert first.try_acquire()
        assert first.try_acquire()  # re-entrant for its holder
        assert not second.try_acquire()
        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()
        other_engine.dispose()


@pytest.fixture
def second_journal(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """Another journal beside `engine`'s: a second SQLite file, or a second PostgreSQL schema
    in the same database."""
    if engine.dialect.name == "sqlite":
        other = make_engine(f"sqlite:///{tmp_path / 'second.sqlite'}")
        yield other
        other.dispose()
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    other = make_engine(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        yield other
    finally:
        other.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_each_role_and_each_journal_has_a_lock_of_its_own(
    engine: Engine, second_journal: Engine
) -> None:
    """Roles never exclude each other; neither do two journals (on PostgreSQL, two schemas of
    one database: advisory locks are database-wide, so the key names the schema)."""
    same_journal = make_engine(engine.url.render_as_string(hide_password=False))
    locks = [
        SingletonLock(engine, name="anchorer"),
        SingletonLock(engine, name="nats-relay"),
        SingletonLock(second_journal, name="anchorer"),
    ]
    rival = SingletonLock(same_journal, name="nats-relay")
    try:
        assert all(lock.try_acquire() for lock in locks)
        assert not rival.try_acquire()
    finally:
        for lock in locks:
            lock.release()
        rival.release()
        same_journal.dispose()
