"""Read-only transactions for the outbound workers.

Exports: `reading`.

A relay polls the feed all the time; on SQLite a plain transaction would queue for the write
lock at every poll and hold up the API's writers. `reading` begins a read-only transaction
(deferred on SQLite, a WAL snapshot; no write queue), as `api.transaction.read_only` does for
handlers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.session import READ_ONLY

__all__ = ["reading"]


@contextmanager
def reading(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a read-only transaction, closed on exit."""
    with session_factory() as session, session.begin():
        session.connection(execution_options={READ_ONLY: True})
        yield session
