"""A batch write: every record's document is `document_content` byte for byte, committed under
its customer's key, all or none."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, Record
from crm_ledger.errors import NotFound
from crm_ledger.journal import records
from crm_ledger.journal.schemas import InteractionCreate
from crm_ledger.ledger.canonical import canonical_json
from tests.anchoring.fakes import make_customer

BODIES = [
    {"topic": "billing"},
    {"note": 'quote " backslash \\ tab \t newline \n control \x01', "n": -7},
    {"ü": "żółć 🎉", "é": ["\u2028", "\u007f", {"z": 1, "a": [True, None]}]},
    {},
]


def interactions(customer_ids: list[str]) -> list[InteractionCreate]:
    return [
        InteractionCreate(
            customer_id=customer_ids[n % len(customer_ids)],
            type="support_call",
            channel="phone",
            occurred_at="2026-11-25T10:00:00Z",
            details=BODIES[n % len(BODIES)],
        )
        for n in range(12)
    ]


def test_each_document_is_the_canonical_document_and_its_commitment_is_keyed(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        customers = [make_customer(session, name=f"c{i}") for i in range(3)]
        keys = {c.id: c.key for c in customers}
    with session_factory() as session, session.begin():
        written = records.record_interactions(
            session=session, payloads=interactions(list(keys)), max_items=100
        )
    assert len({view.id for view in written}) == 12
    with session_factory() as session:
        stored = {
            r.id: r
            for r in session.scalars(select(Record).where(Record.id.in_([v.id for v in written])))
        }
        pks = dict(session.execute(select(Customer.id, Customer.pk)).tuples().all())
        read_back = [records.get_record(session=session, record_id=v.id) for v in written]
    # A write also hands back each body's canonical text (a read has only the document).
    assert read_back == [view._replace(body_json=None) for view in written]
    for view in written:
        expected = records.document_content(
            record_id=view.id,
            customer_id=view.customer_id,
            kind=view.kind,
            recorded_at=view.recorded_at,
            body=view.body or {},
        )
        assert view.document is not None and view.document.encode() == expected
        assert view.body_json is not None
        assert view.body_json.encode() == canonical_json(view.body)
        key = keys[view.customer_id]
        assert key is not None
        assert view.commitment == hmac.new(key, expected, hashlib.sha256).digest()
        row = stored[view.id]
        assert (bytes(row.content or b""), bytes(row.commitment)) == (expected, view.commitment)
        assert row.customer_pk == pks[view.customer_id] and row.seq is None


def test_a_batch_with_an_unknown_customer_writes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        known = make_customer(session, name="c").id
    unknown = "00000000-0000-4000-8000-000000000000"
    with (
        pytest.raises(NotFound, match=r"items\[1\]"),
        session_factory() as session,
        session.begin(),
    ):
        records.record_interactions(
            session=session, payloads=interactions([known, unknown]), max_items=100
        )
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Record)) == 0
