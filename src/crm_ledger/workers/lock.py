"""Every background worker is a singleton per journal: one process may cut and send batches,
one may write what the chain says into the view, one may relay the feed to a broker, and so on.

Exports: `SingletonLock`, `ANCHORER`, `INDEXER`.

On PostgreSQL the lock is a session-level advisory lock held on a dedicated connection, so it is
released by the server if the process dies. Advisory locks belong to the whole database, so the
lock's 64-bit key names the role AND the journal's schema (`current_schema()`): two journals in
two schemas of one database (tenants, test runs) never make each other's workers stand by. On
SQLite (one machine) it is an exclusive `flock` on a file beside the database, released by the
kernel when the process dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

ANCHORER = "anchorer"
INDEXER = "indexer"
_LOCK_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")


def advisory_lock_id(name: str, schema: str) -> int:
    """The signed 64-bit advisory lock key naming role `name` of the journal in `schema`."""
    digest = hashlib.sha256(f"crm-ledger worker lock:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SingletonLock:
    """Non-blocking, process-wide exclusive lock tied to one journal database."""

    def __init__(self, engine: Engine, *, name: str = ANCHORER) -> None:
        if _LOCK_NAME.fullmatch(name) is None:
            raise ValueError(
                f"a singleton role is named in lower case letters, digits and -: {name!r}"
            )
        self._engine = engine
        self._name = name
        self._advisory_id = 0
        self._connection: Connection | None = None
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._connection is not None or self._file is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this process now holds it."""
        if self.held:
            return True
        if self._engine.dialect.name == "postgresql":
            connection = self._engine.connect()
            if not self._advisory_id:  # the schema is the engine's: asked once per lock
                schema = connection.scalar(text("SELECT current_schema()"))
                self._advisory_id = advisory_lock_id(self._name, str(schema))
            got = connection.scalar(
                text("SELECT pg_try_advisory_lock(:id)"), {"id": self._advisory_id}
            )
            connection.commit()
            if got:
                self._connection = connection
                return True
            connection.close()
            return False
        path = self._lock_path()
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        """Give the lock back (also released when the process dies).

        A lock whose connection the server dropped (a restart) is already released there.
        """
        if self._connection is not None:
            try:
                self._connection.execute(
                    text("SELECT pg_advisory_unlock(:id)"), {"id": self._advisory_id}
                )
                self._connection.close()
            except DBAPIError as exc:
                log.warning("the %s lock's connection was lost: %s", self._name, exc.orig or exc)
                self._connection.invalidate()
            self._connection = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def _lock_path(self) -> Path:
        database = self._engine.url.database
        if not database or database == ":memory:":
            raise RuntimeError(f"the SQLite journal must be a file to guard its {self._name}")
        return Path(f"{database}.{self._name}.lock")
