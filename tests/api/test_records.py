"""/v1/interactions, /v1/orders, /v1/records: the committed document, validation, roles."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, IdempotencyEntry, Record, utcnow
from crm_ledger.journal.keys import Role
from crm_ledger.ledger.canonical import canonical_json
from crm_ledger.ledger.leaf import RecordKind
from tests.api.helpers import count, fields, interaction, order, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def stored(session_factory: sessionmaker[Session], record_id: str) -> tuple[Record, Customer]:
    with session_factory() as session:
        record = session.scalars(select(Record).where(Record.id == record_id)).one()
        return record, record.customer


def test_interaction_commits_exactly_the_documented_document(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    response = client.post(
        "/v1/interactions",
        json=interaction(
            customer_id,
            occurred_at="2026-11-25T12:30:00.5+02:00",
            details={"topic": "billing", "nested": {"b": [1, "two", None, True]}},
        ),
        headers=recorder,
    )
    assert response.status_code == 201, response.text
    public = response.json()
    record, customer = stored(session_factory, public["id"])

    expected_body = {
        "type": "support_call",
        "channel": "phone",
        "occurred_at": "2026-11-25T10:30:00.500000Z",
        "details": {"topic": "billing", "nested": {"b": [1, "two", None, True]}},
    }
    document = {
        "v": 1,
        "id": public["id"],
        "customer_id": customer_id,
        "kind": "interaction",
        "recorded_at": public["recorded_at"],
        "body": expected_body,
    }
    assert record.content == canonical_json(document)
    assert customer.key is not None
    assert record.commitment == hmac.new(customer.key, record.content, hashlib.sha256).digest()
    assert record.kind == RecordKind.INTERACTION
    assert record.seq is None and record.leaf_hash is None and record.batch_id is None
    assert record.previous_leaf_hash is None
    assert public["recorded_at"].endswith("Z") and len(public["recorded_at"]) == 27
    assert record.created_at.isoformat(timespec="microseconds").startswith(
        public["recorded_at"][:-1]
    )

    assert public == {
        "id": record.id,
        "customer_id": customer_id,
        "kind": "interaction",
        "content": expected_body,
        "document": record.content.decode("utf-8"),
        "recorded_at": public["recorded_at"],
        "commitment": "0x" + record.commitment.hex(),
        "status": "pending",
        "seq": None,
        "batch_id": None,
        "receipt_url": f"/v1/records/{record.id}/receipt",
    }
    fetched = client.get(f"/v1/records/{record.id}", headers=recorder)
    assert fetched.status_code == 200
    assert fetched.json() == public


def test_order_commits_its_lines_and_money_as_given(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    response = client.post("/v1/orders", json=order(customer_id), headers=recorder)
    assert response.status_code == 201, response.text
    record, _ = stored(session_factory, response.json()["id"])
    assert record.kind == RecordKind.ORDER
    assert record.content is not None
    document = json.loads(record.content)
    assert document["kind"] == "order"
    assert document["body"] == {
        "order_number": "SO-1001",
        "lines": [
            {"sku": "TEA-1", "quantity": 2, "unit_price": "10.50"},
            {"sku": "MUG-2", "quantity": 1, "unit_price": "4"},
        ],
        "total": "25.00",
        "currency": "EUR",
        "status": "paid",
    }


def test_wrong_total_names_both_figures(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    body = problem(
        client.post("/v1/orders", json=order(customer_id, total="26.00"), headers=recorder), 422
    )
    assert "26.00" in body["detail"] and "25.00" in body["detail"]
    assert fields(body) == {"total"}
    assert count(session_factory, Record) == 0


@pytest.mark.parametrize(
    ("overrides", "bad"),
    [
        ({"total": 25}, {"total"}),
        ({"total": 25.0}, {"total"}),
        ({"total": "25,00"}, {"total"}),
        ({"total": "-1"}, {"total"}),
        ({"total": "1" * 19}, {"total"}),
        ({"total": "1.123456789"}, {"total"}),
        ({"currency": "eur"}, {"currency"}),
        ({"currency": "EURO"}, {"currency"}),
        ({"status": "lost"}, {"status"}),
        ({"lines": []}, {"lines"}),
        ({"order_number": ""}, {"order_number"}),
        ({"lines": [{"sku": "A", "quantity": 0, "unit_price": "1"}]}, {"lines[0].quantity"}),
        ({"lines": [{"sku": "A", "quantity": 1.5, "unit_price": "1"}]}, {"lines[0].quantity"}),
        ({"lines": [{"sku": "A", "quantity": "2", "unit_price": "1"}]}, {"lines[0].quantity"}),
        ({"lines": [{"sku": "A", "quantity": True, "unit_price": "1"}]}, {"lines[0].quantity"}),
        ({"lines": [{"sku": "A", "quantity": 1, "unit_price": 1}]}, {"lines[0].unit_price"}),
        ({"lines": [{"sku": "A", "quantity": 1}]}, {"lines[0].unit_price"}),
        ({"customer_id": "nope"}, {"customer_id"}),
    ],
)
def test_invalid_orders_name_each_field(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
    overrides: dict[str, Any],
    bad: set[str],
) -> None:
    response = client.post("/v1/orders", json=order(customer_id, **overrides), headers=recorder)
    assert fields(problem(response, 422)) == bad
    assert count(session_factory, Record) == 0


def test_money_given_as_a_number_gets_a_clear_message(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    body = problem(
        client.post("/v1/orders", json=order(customer_id, total=25), headers=recorder), 422
    )
    assert "decimal string" in body["errors"][0]["message"]


def test_order_with_a_thousand_lines_adds_up_exactly(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    lines = [{"sku": f"S{i}", "quantity": 3, "unit_price": "0.10000001"} for i in range(1000)]
    payload = order(customer_id, lines=lines, total="300.00003000")
    assert client.post("/v1/orders", json=payload, headers=recorder).status_code == 201
    payload["lines"] = [*lines, lines[0]]
    response = client.post("/v1/orders", json=payload, headers=recorder)
    assert fields(problem(response, 422)) == {"lines"}


@pytest.mark.parametrize(
    ("overrides", "bad", "hint"),
    [
        ({"type": ""}, {"type"}, ""),
        ({"type": "x" * 65}, {"type"}, ""),
        ({"channel": "a\nb"}, {"channel"}, "control"),
        ({"occurred_at": "2026-11-25T10:00:00"}, {"occurred_at"}, "time zone"),
        ({"occurred_at": "yesterday"}, {"occurred_at"}, "RFC 3339"),
        ({"occurred_at": 1764064800}, {"occurred_at"}, "RFC 3339"),
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, {"occurred_at"}, "years"),
        ({"details": {"amount": 1.5}}, {"details"}, "amount"),
        ({"details": {"big": 2**53}}, {"details"}, "big"),
        ({"details": {"deep": [[[1e300]]]}}, {"details"}, "deep[0][0][0]"),
        ({"details": ["not", "an", "object"]}, {"details"}, ""),
        ({"customer_id": 42}, {"customer_id"}, ""),
        ({"extra": 1}, {"extra"}, ""),
    ],
)
def test_invalid_interactions_name_each_field(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
    overrides: dict[str, Any],
    bad: set[str],
    hint: str,
) -> None:
    response = client.post(
        "/v1/interactions", json=interaction(customer_id, **overrides), headers=recorder
    )
    body = problem(response, 422)
    assert fields(body) == bad
    assert hint in body["errors"][0]["message"]
    assert count(session_factory, Record) == 0


def test_nan_and_deep_nesting_in_details_are_422(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    headers = {**recorder, "Content-Type": "application/json"}
    nested: Any = 1
    for _ in range(40):
        nested = {"a": [nested]}
    deep = json.dumps(nested)
    for details in ('{"x": NaN}', '{"x": -Infinity}', deep):
        raw = (
            f'{{"customer_id": "{customer_id}", "type": "t", "channel": "c", '
            f'"occurred_at": "2026-11-25T10:00:00Z", "details": {details}}}'
        )
        response = client.post("/v1/interactions", content=raw.encode(), headers=headers)
        assert fields(problem(response, 422)) == {"details"}
    assert count(session_factory, Record) == 0


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b'{"customer_id": ', "application/json", "not valid JSON"),
        (b"", "application/json", "JSON object is required"),
        (b'{"customer_id": "x"}', "text/plain", "Content-Type: application/json"),
        (b"[1, 2]", "application/json", "must be a JSON object"),
        (b'"a string"', "application/json", "must be a JSON object"),
        (b'{"type": ' + b"9" * 5000 + b"}", "application/json", "could not be parsed"),
        (b"\xff\xfe", "application/json", ""),
    ],
)
def test_malformed_bodies_are_422_with_a_clear_message(
    client: TestClient,
    recorder: dict[str, str],
    session_factory: sessionmaker[Session],
    content: bytes,
    content_type: str,
    message: str,
) -> None:
    response = client.post(
        "/v1/interactions", content=content, headers={**recorder, "Content-Type": content_type}
    )
    assert response.status_code in (400, 422), response.text
    body = problem(response, response.status_code)
    assert message in body["detail"] + json.dumps(body.get("errors"))
    assert count(session_factory, Record) == 0


def test_unknown_customer_is_404(
    client: TestClient, recorder: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    unknown = "6f1c2d4e-0000-4000-8000-000000000000"
    body = problem(
        client.post("/v1/interactions", json=interaction(unknown), headers=recorder), 404
    )
    assert unknown in body["detail"]
    problem(client.post("/v1/orders", json=order(unknown), headers=recorder), 404)
    assert count(session_factory, Record) == 0


def test_customer_ids_are_accepted_in_upper_case(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    response = client.post(
        "/v1/interactions", json=interaction(customer_id.upper()), headers=recorder
    )
    assert response.status_code == 201
    assert response.json()["customer_id"] == customer_id


def test_erased_customer_is_409(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(Customer)
            .where(Customer.id == customer_id)
            .values(key=None, wrapped_data_key=None, personal=None, erased_at=utcnow())
        )
    headers = {**recorder, "Idempotency-Key": "after-erasure"}
    body = problem(
        client.post("/v1/interactions", json=interaction(customer_id), headers=headers), 409
    )
    assert "customer's personal data was erased" in body["detail"]
    problem(client.post("/v1/orders", json=order(customer_id), headers=recorder), 409)
    assert count(session_factory, Record) == 0
    assert count(session_factory, IdempotencyEntry) == 0


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.MARKETING])
def test_writes_need_recorder_or_admin(
    client: TestClient,
    keys: dict[Role, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
    role: Role,
) -> None:
    headers = {"Authorization": f"Bearer {keys[role]}"}
    for path, payload in [
        ("/v1/interactions", interaction(customer_id)),
        ("/v1/orders", order(customer_id)),
        ("/v1/interactions/batch", {"items": [interaction(customer_id)]}),
        ("/v1/customers", {"name": "B", "email": "b@example.com"}),
    ]:
        body = problem(client.post(path, json=payload, headers=headers), 403)
        assert body["allowed_roles"] == ["recorder", "admin"]
        assert role.value in body["detail"]
    assert count(session_factory, Record) == 0
    assert count(session_factory, Customer) == 1


def test_admin_writes_and_every_role_reads(
    client: TestClient, keys: dict[Role, str], customer_id: str
) -> None:
    admin = {"Authorization": f"Bearer {keys[Role.ADMIN]}"}
    response = client.post("/v1/interactions", json=interaction(customer_id), headers=admin)
    assert response.status_code == 201
    record_id = response.json()["id"]
    for key in keys.values():
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
        assert client.get(f"/v1/records/{record_id}/receipt", headers=headers).status_code == 202


def test_unknown_record_is_404_and_a_malformed_id_422(
    client: TestClient, auditor: dict[str, str]
) -> None:
    problem(client.get("/v1/records/6f1c2d4e-0000-4000-8000-000000000000", headers=auditor), 404)
    problem(client.get("/v1/records/abc/receipt", headers=auditor), 422)
