"""Personal data over the API: erasure reaches stored idempotent answers, who read whom is
journaled, and roles without a need for personal fields get pseudonymous views."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.idempotency import configure_retention
from crm_ledger.api.routes import customers as customers_route
from crm_ledger.db.models import IdempotencyEntry, IdempotencySubject, Record, utcnow
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.keys import Role
from crm_ledger.journal.privacy import KeyRing, attach_keyring
from crm_ledger.ledger.leaf import RecordKind
from tests.api.helpers import interaction, problem
from tests.apps import TestClient

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0958"}
GRACE = {"name": "Grace Hopper", "email": "grace@example.com"}


def bearer(keys: dict[Role, str], role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[role]}"}


def create(client: TestClient, headers: dict[str, str], idempotency_key: str) -> dict[str, Any]:
    response = client.post(
        "/v1/customers", json=ADA, headers={**headers, "Idempotency-Key": idempotency_key}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def access_log(client: TestClient, keys: dict[Role, str], customer: str) -> list[dict[str, Any]]:
    response = client.get(
        f"/v1/customers/{customer}/access-log", headers=bearer(keys, Role.AUDITOR)
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# Finding 4: erasure reaches the idempotency store ---------------------------------------------


def test_a_replay_after_erasure_answers_410_without_personal_data(
    client: TestClient, keys: dict[Role, str]
) -> None:
    recorder = bearer(keys, Role.RECORDER)
    customer = create(client, recorder, "create-ada")["id"]
    call = client.post(
        "/v1/interactions",
        json=interaction(customer),
        headers={**recorder, "Idempotency-Key": "call-ada"},
    )
    assert call.status_code == 201
    before = client.post(
        "/v1/customers", json=ADA, headers={**recorder, "Idempotency-Key": "create-ada"}
    )
    assert before.status_code == 201 and before.json()["name"] == "Ada Lovelace"

    erased = client.delete(
        f"/v1/customers/{customer}/personal-data", headers=bearer(keys, Role.ADMIN)
    )
    assert erased.status_code == 200, erased.text

    for path, body, key in (
        ("/v1/customers", ADA, "create-ada"),
        ("/v1/interactions", interaction(customer), "call-ada"),
    ):
        replay = client.post(path, json=body, headers={**recorder, "Idempotency-Key": key})
        gone = problem(replay, 410)
        assert "erased" in gone["detail"]
        assert "Ada" not in replay.text and "ada@example.com" not in replay.text
        assert "billing" not in replay.text
    # Not carried out again: still exactly one customer.
    listed = client.get("/v1/customers", headers=bearer(keys, Role.ADMIN)).json()["items"]
    assert [item["id"] for item in listed] == [customer]


def test_erasure_deletes_the_stored_answers_and_only_those_of_the_customer(
    client: TestClient, keys: dict[Role, str], session_factory: sessionmaker[Session]
) -> None:
    recorder = bearer(keys, Role.RECORDER)
    ada = create(client, recorder, "k-ada")["id"]
    other = client.post(
        "/v1/customers",
        json=GRACE,
        headers={**recorder, "Idempotency-Key": "k-grace"},
    ).json()["id"]
    batch = client.post(
        "/v1/interactions/batch",
        json={"items": [interaction(ada), interaction(other)]},
        headers={**recorder, "Idempotency-Key": "k-both"},
    )
    assert batch.status_code == 201
    client.delete(f"/v1/customers/{ada}/personal-data", headers=bearer(keys, Role.ADMIN))

    with session_factory() as session:
        rows = {row.key: row for row in session.scalars(select(IdempotencyEntry))}
    assert rows["k-ada"].response_sealed is None and rows["k-ada"].erased_at is not None
    # A batch that concerned the erased customer loses its answer too (it held their records).
    assert rows["k-both"].response_sealed is None
    assert rows["k-grace"].response_sealed is not None and rows["k-grace"].erased_at is None
    replay = client.post(
        "/v1/customers",
        json=GRACE,
        headers={**recorder, "Idempotency-Key": "k-grace"},
    )
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == other


def test_stored_answers_are_sealed(
    client: TestClient, keys: dict[Role, str], session_factory: sessionmaker[Session]
) -> None:
    create(client, bearer(keys, Role.RECORDER), "sealed")
    with session_factory() as session:
        (row,) = session.scalars(select(IdempotencyEntry)).all()
        subjects = session.scalar(select(func.count()).select_from(IdempotencySubject))
    assert row.response_sealed is not None
    assert b"Ada" not in row.response_sealed and b"ada@example.com" not in row.response_sealed
    assert subjects == 1


def test_expired_answers_are_pruned_and_the_key_can_be_used_afresh(
    app: FastAPI,
    client: TestClient,
    keys: dict[Role, str],
    session_factory: sessionmaker[Session],
) -> None:
    engine = app.state.runtime.engine
    configure_retention(engine, retention_hours=24, interval_seconds=0.001)
    recorder = bearer(keys, Role.RECORDER)
    first = create(client, recorder, "old-key")["id"]
    create(client, recorder, "fresh-key")
    with session_factory.begin() as session:
        session.execute(
            update(IdempotencyEntry)
            .where(IdempotencyEntry.key == "old-key")
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    again = create(client, recorder, "old-key")["id"]
    assert again != first
    with session_factory() as session:
        keys_left = sorted(session.scalars(select(IdempotencyEntry.key)))
        created = session.scalar(
            select(IdempotencyEntry.created_at).where(IdempotencyEntry.key == "old-key")
        )
    assert keys_left == ["fresh-key", "old-key"]
    assert created is not None and created > utcnow() - timedelta(hours=1)


# Part 4: who read whom ------------------------------------------------------------------------


def test_each_read_of_personal_fields_is_journaled_with_key_role_and_purpose(
    client: TestClient, keys: dict[Role, str], session_factory: sessionmaker[Session]
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    admin = bearer(keys, Role.ADMIN)
    got = client.get(
        f"/v1/customers/{customer}", headers={**admin, "X-Purpose": "support ticket 4711"}
    )
    assert got.status_code == 200 and got.json()["email"] == "ada@example.com"
    assert client.get(f"/v1/crm/customers/{customer}", headers=admin).status_code == 200
    assert client.get("/v1/customers", headers=admin).status_code == 200
    assert client.get("/v1/crm/customers", headers=admin).status_code == 200

    entries = access_log(client, keys, customer)
    assert [entry["operation"] for entry in entries] == [
        "crm.customers",
        "customers.list",
        "crm.customer_view",
        "customers.get",
    ]
    assert {entry["role"] for entry in entries} == {"admin"}
    assert entries[-1]["purpose"] == "support ticket 4711" and entries[0]["purpose"] is None
    assert all(entry["status"] == "pending" and entry["key_id"] for entry in entries)
    # Anchored like every other record: pending records of kind access, in the journal.
    with session_factory() as session:
        kinds = session.scalars(select(Record.kind).where(Record.seq.is_(None))).all()
    assert kinds.count(int(RecordKind.ACCESS)) == 4
    # Reading the log shows no personal field and leaves no record of its own.
    assert len(access_log(client, keys, customer)) == 4
    # The 360 view's record counts are the customer's history, not reads of it.
    view = client.get(f"/v1/crm/customers/{customer}", headers=admin).json()
    assert view["records"] == {"pending": 0, "anchored": 0, "confirmed": 0}


def test_the_access_log_pages_newest_first(client: TestClient, keys: dict[Role, str]) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    for n in range(5):
        client.get(
            f"/v1/customers/{customer}",
            headers={**bearer(keys, Role.ADMIN), "X-Purpose": f"read {n}"},
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(
            f"/v1/customers/{customer}/access-log",
            headers=bearer(keys, Role.ADMIN),
            params=params,
        ).json()
        seen += [entry["purpose"] for entry in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"read {n}" for n in reversed(range(5))]


@pytest.mark.parametrize("role", [Role.RECORDER, Role.MARKETING])
def test_the_access_log_is_for_auditors_and_admins(
    client: TestClient, keys: dict[Role, str], role: Role
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    problem(client.get(f"/v1/customers/{customer}/access-log", headers=bearer(keys, role)), 403)


def test_marketing_gets_pseudonymous_views_and_leaves_no_access_record(
    client: TestClient, keys: dict[Role, str]
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    marketing = bearer(keys, Role.MARKETING)
    for path in (f"/v1/customers/{customer}", f"/v1/crm/customers/{customer}"):
        response = client.get(path, headers=marketing)
        assert response.status_code == 200
        assert "Ada" not in response.text and "ada@example.com" not in response.text
    for path in ("/v1/customers", "/v1/crm/customers"):
        (item,) = client.get(path, headers=marketing).json()["items"]
        assert item["id"] == customer
        assert (item["name"], item["email"], item["phone"]) == (None, None, None)
    assert access_log(client, keys, customer) == []


def test_a_setting_grants_marketing_personal_fields(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    app.state.runtime.settings.personal_data_roles = "recorder,auditor,admin,marketing"
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    got = client.get(f"/v1/customers/{customer}", headers=bearer(keys, Role.MARKETING))
    assert got.json()["name"] == "Ada Lovelace"
    assert [entry["role"] for entry in access_log(client, keys, customer)] == ["marketing"]


def test_reads_of_an_erased_customer_leave_no_access_record(
    client: TestClient, keys: dict[Role, str]
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    admin = bearer(keys, Role.ADMIN)
    client.get(f"/v1/customers/{customer}", headers=admin)
    client.delete(f"/v1/customers/{customer}/personal-data", headers=admin)
    got = client.get(f"/v1/customers/{customer}", headers=admin).json()
    assert got["name"] is None and got["erased_at"] is not None
    (entry,) = access_log(client, keys, customer)
    # The earlier access record keeps its place in the ledger; its content went with the rest.
    assert entry["operation"] is None and entry["key_id"] is None


@pytest.mark.parametrize("purpose", ["", "x" * 201, "tab\there"])
def test_a_bad_purpose_header_gets_a_422(
    client: TestClient, keys: dict[Role, str], purpose: str
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    response = client.get(
        f"/v1/customers/{customer}", headers={**bearer(keys, Role.ADMIN), "X-Purpose": purpose}
    )
    problem(response, 422)


def test_the_new_statuses_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"200", "403", "404", "422"} <= set(
        paths["/v1/customers/{customer_id}/access-log"]["get"]["responses"]
    )
    for path in ("/v1/customers", "/v1/interactions", "/v1/orders", "/v1/redemptions"):
        assert {"410", "503"} <= set(paths[path]["post"]["responses"]), path
    for path in ("/v1/customers/{customer_id}", "/v1/crm/customers/{customer_id}"):
        assert "503" in paths[path]["get"]["responses"], path


def test_a_master_key_that_does_not_open_the_data_answers_503(
    app: FastAPI, client: TestClient, keys: dict[Role, str]
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    attach_keyring(app.state.runtime.engine, KeyRing.generate())
    for path in (f"/v1/customers/{customer}", f"/v1/crm/customers/{customer}"):
        body = problem(client.get(path, headers=bearer(keys, Role.ADMIN)), 503)
        assert "master key" in body["detail"]
    replay = client.post(
        "/v1/customers", json=ADA, headers={**bearer(keys, Role.RECORDER), "Idempotency-Key": "c"}
    )
    problem(replay, 503)
    # Marketing's pseudonymous view opens nothing, so it still works.
    got = client.get(f"/v1/customers/{customer}", headers=bearer(keys, Role.MARKETING))
    assert got.status_code == 200


def test_a_customer_erased_while_being_read_is_not_shown(
    client: TestClient,
    keys: dict[Role, str],
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    shown = customers_route.customer_public

    def erase_meanwhile(*args: Any) -> Any:
        # The read has opened the fields; the erasure commits before its access record.
        with session_factory.begin() as session:
            erase_customer(session=session, customer_id=customer)
        return shown(*args)

    monkeypatch.setattr(customers_route, "customer_public", erase_meanwhile)
    response = client.get(f"/v1/customers/{customer}", headers=bearer(keys, Role.ADMIN))
    body = problem(response, 409)
    assert "erased while it was being read" in body["detail"]
    assert "Ada" not in response.text


def test_marketing_cannot_use_the_email_index_as_an_oracle(
    client: TestClient, keys: dict[Role, str]
) -> None:
    customer = create(client, bearer(keys, Role.RECORDER), "c")["id"]
    params = {"q": ADA["email"]}
    found = client.get("/v1/crm/customers", headers=bearer(keys, Role.ADMIN), params=params)
    assert [item["id"] for item in found.json()["items"]] == [customer]
    hidden = client.get("/v1/crm/customers", headers=bearer(keys, Role.MARKETING), params=params)
    assert hidden.status_code == 200 and hidden.json()["items"] == []
