"""Size limits: 64 KiB bodies (declared or streamed), 1,000-item batches, all or nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.db.models import Record
from crm_ledger.ledger.leaf import RecordKind
from tests.api.helpers import count, fields, interaction, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

LIMIT = 64 * 1024


def padded_interaction(customer_id: str, size: int) -> bytes:
    """An interaction whose JSON is exactly `size` bytes."""
    body = interaction(customer_id, details={"note": ""})
    overhead = len(json.dumps(body).encode())
    body["details"]["note"] = "x" * (size - overhead)
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


def test_default_limit_is_64_kib(settings: Settings) -> None:
    assert settings.max_body_bytes == LIMIT
    assert settings.max_batch_items == 1000


def test_a_body_of_exactly_64_kib_is_accepted(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    response = client.post(
        "/v1/interactions",
        content=padded_interaction(customer_id, LIMIT),
        headers={**recorder, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


def test_a_declared_body_over_64_kib_is_413(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    response = client.post(
        "/v1/interactions",
        content=padded_interaction(customer_id, LIMIT + 1),
        headers={**recorder, "Content-Type": "application/json"},
    )
    body = problem(response, 413)
    assert str(LIMIT) in body["detail"]
    assert count(session_factory, Record) == 0


def test_a_streamed_body_over_64_kib_is_413(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    raw = padded_interaction(customer_id, LIMIT + 1)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]

    response = client.post(
        "/v1/interactions",
        content=chunks(),
        headers={**recorder, "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    problem(response, 413)
    assert count(session_factory, Record) == 0


def test_a_body_over_the_limit_is_413_even_without_a_key(client: TestClient) -> None:
    response = client.post(
        "/v1/customers",
        content=b"{" + b" " * LIMIT + b"}",
        headers={"Content-Type": "application/json"},
    )
    problem(response, 413)


def batch(customer_id: str, n: int, **overrides: Any) -> dict[str, Any]:
    return {"items": [interaction(customer_id, type=f"t{i}", **overrides) for i in range(n)]}


def test_a_batch_of_1000_is_written_in_order(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    payload = batch(customer_id, 1000)
    assert len(json.dumps(payload)) > LIMIT  # the batch endpoint has its own, larger limit
    response = client.post("/v1/interactions/batch", json=payload, headers=recorder)
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [item["content"]["type"] for item in items] == [f"t{i}" for i in range(1000)]
    assert len({item["id"] for item in items}) == 1000
    with session_factory() as session:
        ids = list(session.scalars(select(Record.id).order_by(Record.pk)))
        kinds = set(session.scalars(select(Record.kind)))
    assert ids == [item["id"] for item in items]
    assert kinds == {RecordKind.INTERACTION}


def test_a_batch_of_1001_is_413_and_writes_nothing(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    response = client.post(
        "/v1/interactions/batch", json=batch(customer_id, 1001), headers=recorder
    )
    body = problem(response, 413)
    assert "1000" in body["detail"] and "1001" in body["detail"]
    assert count(session_factory, Record) == 0


def test_an_invalid_item_500_fails_the_whole_batch(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    payload = batch(customer_id, 1000)
    payload["items"][500]["occurred_at"] = "not a time"
    response = client.post("/v1/interactions/batch", json=payload, headers=recorder)
    assert fields(problem(response, 422)) == {"items[500].occurred_at"}
    assert count(session_factory, Record) == 0


def test_an_unknown_customer_in_item_500_fails_the_whole_batch(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    payload = batch(customer_id, 1000)
    payload["items"][500]["customer_id"] = "6f1c2d4e-0000-4000-8000-000000000000"
    response = client.post("/v1/interactions/batch", json=payload, headers=recorder)
    body = problem(response, 404)
    assert body["field"] == "items[500].customer_id"
    assert count(session_factory, Record) == 0


def test_a_batch_may_mix_customers(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    other = client.post(
        "/v1/customers", json={"name": "B", "email": "b@example.com"}, headers=recorder
    ).json()["id"]
    payload = {"items": [interaction(customer_id), interaction(other), interaction(customer_id)]}
    response = client.post("/v1/interactions/batch", json=payload, headers=recorder)
    assert response.status_code == 201
    assert [i["customer_id"] for i in response.json()["items"]] == [customer_id, other, customer_id]


def test_an_empty_batch_is_422(client: TestClient, recorder: dict[str, str]) -> None:
    response = client.post("/v1/interactions/batch", json={"items": []}, headers=recorder)
    assert fields(problem(response, 422)) == {"items"}


def test_the_batch_limit_follows_the_settings(
    settings: Settings, recorder: dict[str, str], customer_id: str, client: TestClient
) -> None:
    settings.max_batch_items = 3
    response = client.post("/v1/interactions/batch", json=batch(customer_id, 4), headers=recorder)
    problem(response, 413)
    response = client.post("/v1/interactions/batch", json=batch(customer_id, 3), headers=recorder)
    assert response.status_code == 201
