"""How every API handler opens its database transaction.

Exports: `transaction`, `read_only`.

`transaction(session)` is for handlers that write: on SQLite it queues on the engine's write
queue and takes the write lock (`db.session`). `read_only(session)` is for handlers that only
read: every statement of it sees the same snapshot, so a response never mixes states (a lot
counted as spendable in one query and shown unsent by the next). On SQLite it begins deferred
and never waits for a writer (WAL gives it the snapshot), so a busy 360 view or change-feed
reader cannot hold up writes, the anchorer or the indexer; on PostgreSQL it is a
`REPEATABLE READ, READ ONLY` transaction (READ COMMITTED would give each statement its own).
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
    options: dict[str, object] = {READ_ONLY: True}
    if session.get_bind().dialect.name == "postgresql":
        options |= {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with session.begin():
        session.connection(execution_options=options)
        yield session
