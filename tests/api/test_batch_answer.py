"""The answer of a batch write: `RecordsPublic`, made without a pydantic model per record."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.schemas import record_public, record_public_json, records_public_json
from crm_ledger.journal import records
from crm_ledger.schemas import RecordPublic, RecordsPublic
from tests.anchoring.fakes import make_customer
from tests.journal.test_records import interactions


def test_the_batch_answer_is_records_public(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        customer = make_customer(session, name="c").id
    with session_factory() as session, session.begin():
        written = records.record_interactions(
            session=session, payloads=interactions([customer]), max_items=100
        )
    answer = records_public_json(written)
    expected = RecordsPublic(items=[record_public(r) for r in written])
    assert RecordsPublic.model_validate_json(answer) == expected
    assert json.loads(answer) == json.loads(expected.model_dump_json())


def test_one_record_answer_is_record_public_written_read_or_erased(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        customer = make_customer(session, name="c").id
    with session_factory() as session, session.begin():
        written = records.record_interactions(
            session=session, payloads=interactions([customer]), max_items=100
        )
    with session_factory() as session:
        read = [records.get_record(session=session, record_id=r.id) for r in written]
    assert all(r.body_json is not None for r in written)  # what the fast answer embeds
    assert all(r.body_json is None for r in read)  # a read has only the body
    erased = [r._replace(body=None, document=None, body_json=None) for r in written[:2]]
    anchored = [r._replace(anchored=True, seq=7, batch_id=3) for r in read[:2]]
    for view in [*written, *read, *erased, *anchored]:
        answer = record_public_json(view)
        assert RecordPublic.model_validate_json(answer) == record_public(view)
        assert json.loads(answer) == json.loads(record_public(view).model_dump_json())
