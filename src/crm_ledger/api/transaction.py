"""`transaction(session)`: how every API handler opens its database transaction.

Exports: `transaction`.

On SQLite every transaction takes the single write lock (`db.session` begins them with
`BEGIN IMMEDIATE`), and a transaction that finds it taken retries on SQLite's busy handler, which
sleeps for milliseconds at a time: under concurrency most of the time goes to sleeping. So this
process's transactions first queue on an in-process lock, which hands the database to the next
one the moment the previous one ends. Other processes (a separate anchorer) still meet on SQLite's
lock. PostgreSQL needs none of this.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import Engine
from sqlalchemy.orm import Session

_sqlite_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


@contextmanager
def transaction(session: Session) -> Iterator[Session]:
    """`session.begin()`, queued behind this process's other transactions on SQLite."""
    with _sqlite_lock(session), session.begin():
        yield session


def _sqlite_lock(session: Session) -> threading.Lock | nullcontext[None]:
    engine = session.get_bind()
    if engine.dialect.name != "sqlite" or not isinstance(engine, Engine):
        return nullcontext()
    with _guard:
        lock = _sqlite_locks.get(engine)
        if lock is None:
            lock = _sqlite_locks[engine] = threading.Lock()
        return lock
