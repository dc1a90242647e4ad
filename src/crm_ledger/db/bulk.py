"""Bulk inserts for hot paths (the indexer, the change feed, batch writes of records): rows
straight to the driver.

Exports: `insert_rows`, `update_rows`, `processed_now`, `processed_time`.

One indexer range can write tens of thousands of indexed events and feed events. Through
SQLAlchemy's usual insert every row's parameters are compiled and converted one by one, which
costs more than the database work itself. Here the statement is built once and the rows go to
the DBAPI cursor as plain tuples; values must therefore already be what the driver takes:
`bytes`, `int`, `str`, None, and timestamps converted by `processed_now` / `processed_time`.
On PostgreSQL the rows are streamed with `COPY ... FROM STDIN` (psycopg 3), the fastest way
in. `update_rows` is the same for one UPDATE by key per row (the anchorer's cut: 2,000 records
at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from crm_ledger.db.models import UTCDateTime, utcnow

__all__ = ["insert_rows", "processed_now", "processed_time", "update_rows"]


def processed_now(session: Session) -> Any:
    """`utcnow()` as the session's driver takes it for a `UTCDateTime` column."""
    return processed_time(session, utcnow())


def processed_time(session: Session, moment: datetime) -> Any:
    """`moment` (timezone-aware) as the session's driver takes it for a `UTCDateTime` column,
    converted once for all the rows that share it: on SQLite the same text the ORM stores
    ("2026-12-08 01:27:05.476587"), not a `datetime` the driver's deprecated default adapter
    would turn into other text ("...+00:00") row by row."""
    dialect = session.get_bind().dialect
    # One type object for every call: SQLAlchemy keeps its dialect form per dialect, so the
    # lookup is made once per engine (a new `UTCDateTime()` each time cost 12 us a call).
    processor = _UTC_DATETIME.dialect_impl(dialect).bind_processor(dialect)
    return processor(moment) if processor is not None else moment


_UTC_DATETIME = UTCDateTime()


def insert_rows(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT `rows` (tuples in `columns` order) into `table`, in the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    if dialect.name == "postgresql":
        # COPY: one stream instead of a statement per row, in the same transaction.
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {quote(table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    statement = f"INSERT INTO {quote(table)} ({names}) VALUES ({', '.join([mark] * len(columns))})"
    connection.exec_driver_sql(statement, list(rows))


def update_rows(
    session: Session,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    key: str,
) -> None:
    """UPDATE `table` SET `columns` WHERE `key` = the last value of each row (tuples in
    `columns` order, then the key), one executemany in the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    assignments = ", ".join(f"{quote(c)} = {mark}" for c in columns)
    statement = f"UPDATE {quote(table)} SET {assignments} WHERE {quote(key)} = {mark}"
    connection.exec_driver_sql(statement, list(rows))
