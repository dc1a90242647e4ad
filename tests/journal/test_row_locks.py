"""Row locks on PostgreSQL: record writers, the anchorer's cut and the erasure.

A record writer locks its customer's row so that an erasure cannot slip in between its key
check and its commit. The lock must be `FOR KEY SHARE`, not `FOR SHARE`: the group committer
runs many writes in one transaction, each locking its own customer in arrival order, while the
anchorer's cut updates customers' last leaf hashes in pk order. `FOR SHARE` conflicts with that
UPDATE, so a group that locked customer b and then wants a, against a cut that updated a and
wants b, deadlocked (PostgreSQL aborted one after a second; the soak logged four in three
minutes). `FOR KEY SHARE` does not conflict with an UPDATE of non-key columns, and still does
with the erasure's `FOR UPDATE`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring.batches import BatchPlan, cut_batch
from crm_ledger.db.models import Customer, Record
from crm_ledger.journal import records
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.schemas import InteractionCreate
from tests.anchoring.fakes import make_customer


def interaction(customer_id: str) -> InteractionCreate:
    return InteractionCreate(
        customer_id=customer_id,
        type="support_call",
        channel="phone",
        occurred_at="2026-11-25T10:00:00Z",
        details={"topic": "billing"},
    )


@pytest.fixture
def two_customers(database_url: str, session_factory: sessionmaker[Session]) -> tuple[str, str]:
    """Customers a and b (a has the lower pk), each with one record waiting to be anchored."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time")
    with session_factory.begin() as session:
        a = make_customer(session, name="A", email="a@example.com")
        b = make_customer(session, name="B", email="b@example.com")
        session.flush()
        assert a.pk < b.pk
        ids = a.id, b.id
        for customer_id in ids:
            records.record_interaction(session=session, payload=interaction(customer_id))
    return ids


def test_a_group_of_writes_and_the_anchorers_cut_do_not_deadlock(
    session_factory: sessionmaker[Session], two_customers: tuple[str, str]
) -> None:
    a, b = two_customers
    cut: Future[BatchPlan | None] = Future()

    def run_cut() -> None:
        try:
            cut.set_result(cut_batch(session_factory, max_records=100))
        except Exception as exc:
            cut.set_exception(exc)

    # One group-commit transaction: a write for b, then (after the cut has begun) one for a.
    with session_factory.begin() as group:
        records.record_interaction(session=group, payload=interaction(b))
        anchorer = threading.Thread(target=run_cut)
        anchorer.start()
        # With FOR SHARE the cut now waits on b after updating a; give it time to get there.
        anchorer.join(timeout=0.5)
        records.record_interaction(session=group, payload=interaction(a))
    anchorer.join(timeout=30)

    plan = cut.result(timeout=0)  # raises DeadlockDetected if PostgreSQL picked the cut
    assert plan is not None and plan.count == 2
    with session_factory() as session:
        kinds = session.execute(select(Record.seq, Record.customer_pk)).all()
        tips = session.scalars(select(Customer.last_leaf_hash).order_by(Customer.pk)).all()
    assert len(kinds) == 4
    assert sorted(seq for seq, _ in kinds if seq is not None) == [0, 1]
    assert all(tip is not None for tip in tips)


def test_an_erasure_still_waits_for_a_record_being_written(
    session_factory: sessionmaker[Session], two_customers: tuple[str, str]
) -> None:
    a, _ = two_customers
    with session_factory.begin() as writer:
        records.record_interaction(session=writer, payload=interaction(a))
        with pytest.raises(OperationalError) as raised, session_factory.begin() as eraser:
            eraser.execute(text("SET LOCAL lock_timeout = '200ms'"))
            erase_customer(session=eraser, customer_id=a)
    assert getattr(raised.value.orig, "sqlstate", None) == "55P03"  # lock_not_available
    with session_factory.begin() as eraser:
        assert erase_customer(session=eraser, customer_id=a).erased_records == 2
