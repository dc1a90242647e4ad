"""How every API handler opens its database transaction.

Exports: `transaction`, `read_only`.

`transaction(session)` is for handlers that write: on SQLite it queues on the engine's write
queue and takes the write lock (`db.session`). `read_only(session)` is for handlers that only
read: on SQLite it begins deferred and never waits for a writer (WAL gives it a snapshot), so
a busy 360 view or change-feed reader cannot hold up writes, the anchorer or the indexer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from crm_ledger.db.session import READ_ONLY


@contextmanager
def transaction(session: Session) -> Iterator[Session]:
    """A write transaction (`session.begin()`)."""
    with session.begin():
        yield session


@contextmanager
def read_only(session: Session) -> Iterator[Session]:
    """A transaction that only reads: one consistent snapshot, no write lock."""
    with session.begin():
        session.connection(execution_options={READ_ONLY: True})
        yield session
