"""The answer of a batch write: `RecordsPublic`, made without a pydantic model per record."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.schemas import record_public, records_public_json
from crm_ledger.journal import records
from crm_ledger.schemas import RecordsPublic
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
