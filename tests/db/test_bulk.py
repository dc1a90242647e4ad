"""db.bulk and the public ids a batch write takes: rows straight to the driver, both databases."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db import bulk
from crm_ledger.db.models import Customer, new_id, new_ids
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
