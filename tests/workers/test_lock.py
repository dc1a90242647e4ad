"""Only one anchorer per journal: the second one waits."""

from __future__ import annotations

from sqlalchemy import Engine

from crm_ledger.db.session import make_engine
from crm_ledger.workers.lock import SingletonLock


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
