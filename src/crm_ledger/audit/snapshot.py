"""Long consistent reads of the journal that do not hold up writers.

Exports: `read_snapshot`, `latest_deployment`, `DeploymentRecord`, `STORED_BATCHES`.

The service's SQLite engine begins every transaction with `BEGIN IMMEDIATE` (it takes the write
lock up front so writers queue instead of failing). An audit or an export reads for seconds or
minutes; under that lock every write would wait. So reads here go through a connection of their
own that begins a plain deferred transaction: in WAL mode it reads a snapshot while writers carry
on. On PostgreSQL the snapshot is a REPEATABLE READ transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.pool import NullPool

from crm_ledger.db.models import Batch, Deployment
from crm_ledger.journal.receipts import AUDIT_LEDGER

#: Every stored batch, in id order, with what the ledger audit and the exports compare with the
#: chain. Its count is `size`: a Row is a tuple, and tuples have a count() method.
STORED_BATCHES = select(
    Batch.id,
    Batch.first_seq,
    Batch.count.label("size"),
    Batch.root,
    Batch.previous_head,
    Batch.head,
    Batch.status,
    Batch.epoch,
    Batch.tx_hash,
    Batch.block_number,
    Batch.block_hash,
).order_by(Batch.id)


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection inside one read-only snapshot of the database, rolled back on exit."""
    if engine.dialect.name == "sqlite":
        # check_same_thread off: a streamed export is read from whichever worker thread the
        # web server iterates it on, one at a time.
        reader = create_engine(
            engine.url, poolclass=NullPool, connect_args={"check_same_thread": False}
        )

        @event.listens_for(reader, "connect")
        def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(reader, "begin")
        def _deferred_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        try:
            with reader.connect() as conn, conn.begin() as transaction:
                yield conn
                transaction.rollback()
        finally:
            reader.dispose()
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin() as transaction:
            yield conn
            transaction.rollback()


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """The AuditLedger deployment the journal anchors to, as the database recorded it."""

    epoch: int
    chain_id: int
    address: str
    genesis_hash: bytes
    code_hash: bytes
    block_number: int


def latest_deployment(conn: Connection) -> DeploymentRecord | None:
    """The AuditLedger deployment of the latest epoch, or None before the first deployment."""
    row = conn.execute(
        select(
            Deployment.epoch,
            Deployment.chain_id,
            Deployment.address,
            Deployment.genesis_hash,
            Deployment.code_hash,
            Deployment.block_number,
        )
        .where(Deployment.contract == AUDIT_LEDGER)
        .order_by(Deployment.epoch.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return DeploymentRecord(
        epoch=int(row.epoch),
        chain_id=int(row.chain_id),
        address=str(row.address),
        genesis_hash=bytes(row.genesis_hash),
        code_hash=bytes(row.code_hash),
        block_number=int(row.block_number),
    )
