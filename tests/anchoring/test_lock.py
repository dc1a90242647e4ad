"""Only one anchorer per journal: the second one waits."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from crm_ledger.anchoring.lock import INDEXER, SingletonLock
from crm_ledger.db.session import make_engine


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


def test_release_after_the_server_dropped_the_connection_does_not_raise(engine: Engine) -> None:
    # A PostgreSQL restart under load (the chaos suite) killed the lock's connection; releasing
    # it at shutdown raised, so the service's shutdown failed before it stopped its Anvil.
    if engine.dialect.name != "postgresql":
        pytest.skip("the advisory lock's connection exists on PostgreSQL only")
    lock = SingletonLock(engine, name=INDEXER)
    if not lock.try_acquire():
        pytest.skip("another test on this shared server holds the indexer lock")
    holder = lock._connection
    assert holder is not None
    pid = holder.scalar(text("SELECT pg_backend_pid()"))
    holder.commit()
    with engine.connect() as admin:
        assert admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    lock.release()
    assert not lock.held
    assert lock.try_acquire()  # the server released it with the session
    lock.release()
