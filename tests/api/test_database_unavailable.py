"""A journal database that cannot take writes (its disk full) answers 503 problem documents with
Retry-After, writes nothing, and the same request with the same Idempotency-Key succeeds once
space returns. The chaos suite's disk-full scenario found these answering 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Record
from tests.api.helpers import interaction
from tests.apps import TestClient


def record_count(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Record)) or 0)


def test_a_full_sqlite_journal_answers_503_and_records_nothing_until_space_returns(
    app: FastAPI,
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
    database_url: str,
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("a page limit stands for a full disk on SQLite only")
    engine = app.state.runtime.engine

    def no_room_to_grow(connection: Any, _record: Any) -> None:
        # The file may not grow past the pages it has: SQLITE_FULL, as on a full disk.
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(engine, "connect", no_room_to_grow)
    engine.dispose()
    answers = []
    for n in range(300):
        before = record_count(session_factory)
        answer = client.post(
            "/v1/interactions",
            json=interaction(customer_id, details={"filler": "x" * 2000, "n": n}),
            headers={**recorder, "Idempotency-Key": f"full-{n}"},
        )
        answers.append(answer.status_code)
        assert answer.status_code in (201, 503), answer.text
        if answer.status_code == 503:
            break
    assert answers[-1] == 503, "the journal never filled up"
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.headers["Retry-After"] == "1"
    problem = answer.json()
    assert problem["type"] == "urn:crm-ledger:problem:database-unavailable"
    assert "disk is full" in problem["detail"]
    assert "same Idempotency-Key" in problem["detail"]
    assert "filler" not in answer.text  # nothing from the request, nor the driver's SQL
    assert record_count(session_factory) == before, "a 503 wrote nothing"

    event.remove(engine, "connect", no_room_to_grow)
    engine.dispose()
    retried = client.post(
        "/v1/interactions",
        json=interaction(customer_id, details={"filler": "x" * 2000, "n": len(answers) - 1}),
        headers={**recorder, "Idempotency-Key": f"full-{len(answers) - 1}"},
    )
    assert retried.status_code == 201, retried.text
    assert record_count(session_factory) == before + 1


def test_every_v1_operation_documents_the_503(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    operations = [
        (path, method, operation)
        for path, item in paths.items()
        if path.startswith("/v1/")
        for method, operation in item.items()
    ]
    assert operations
    for path, method, operation in operations:
        assert "503" in operation["responses"], f"{method.upper()} {path}"
