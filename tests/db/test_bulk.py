"""db.bulk and the public ids a batch write takes: rows straight to the driver, both databases."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db import bulk
from crm_ledger.db.models import Customer, UTCDateTime, new_id, new_ids
from tests.anchoring.fakes import make_customer


def test_new_ids_are_distinct_time_ordered_uuids_in_their_canonical_form() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_ids(500)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 500
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert str(parsed) == value
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: UNIX milliseconds
    assert new_ids(0) == []
    time.sleep(0.002)
    later = new_id()
    assert later > max(ids)  # made in a later millisecond, it sorts after: indexes grow at the end


def test_update_rows_sets_each_row_by_its_key_and_no_other(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        pks = [make_customer(session, name=f"c{i}").pk for i in range(3)]
    with session_factory() as session, session.begin():
        bulk.update_rows(
            session,
            Customer.__tablename__,
            ("last_leaf_hash", "external_ref"),
            [(b"\x01" * 32, "first", pks[0]), (b"\x02" * 32, "third", pks[2])],
            key="pk",
        )
        bulk.update_rows(session, Customer.__tablename__, ("external_ref",), [], key="pk")
    with session_factory() as session:
        rows = session.execute(
            select(Customer.pk, Customer.last_leaf_hash, Customer.external_ref).order_by(
                Customer.pk
            )
        ).all()
    assert [(r.last_leaf_hash, r.external_ref) for r in rows] == [
        (b"\x01" * 32, "first"),
        (None, rows[1].external_ref),
        (b"\x02" * 32, "third"),
    ]
    assert rows[1].external_ref not in ("first", "third")


def test_a_bulk_timestamp_is_stored_as_sqlalchemy_stores_one(
    session_factory: sessionmaker[Session],
) -> None:
    """`processed_time` converts as SQLAlchemy's own INSERT does: on SQLite, which keeps
    whatever text it is given, the same text ("2026-12-08 01:27:34.393144", not the
    "...+00:00" of the driver's default adapter)."""
    moment = datetime(2026, 12, 8, 1, 27, 34, 393144, tzinfo=UTC)
    table = Table(
        "bulk_times",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("at", UTCDateTime()),
    )
    with session_factory() as session, session.begin():
        table.create(session.connection())
        session.execute(table.insert().values(id=1, at=moment))
        bulk.insert_rows(
            session, "bulk_times", ("id", "at"), [(2, bulk.processed_time(session, moment))]
        )
    with session_factory() as session, session.begin():
        stored = session.execute(text("SELECT CAST(at AS TEXT) FROM bulk_times ORDER BY id"))
        assert len({row[0] for row in stored}) == 1
        assert list(session.scalars(select(table.c.at).order_by(table.c.id))) == [moment, moment]
        table.drop(session.connection())
