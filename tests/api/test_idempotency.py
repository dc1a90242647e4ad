"""Idempotency-Key: replays byte for byte, conflicts on a different request, survives races."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from crm_ledger.api.writes import request_path
from crm_ledger.db.models import Customer, IdempotencyEntry, Record
from crm_ledger.journal.keys import Role
from tests.api.helpers import count, fields, interaction, order, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def with_key(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def test_a_retry_replays_the_first_answer_byte_for_byte(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    headers = with_key(recorder, "call-1")
    first = client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert count(session_factory, Record) == 1
    assert count(session_factory, IdempotencyEntry) == 1


def test_the_same_body_spelled_differently_is_the_same_request(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    headers = with_key({**recorder, "Content-Type": "application/json"}, "spelling")
    body = interaction(customer_id)
    first = client.post("/v1/interactions", content=json.dumps(body), headers=headers)
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = client.post("/v1/interactions", content=reordered, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/interactions", {"type": "visit"}),
        ("/v1/orders", None),
    ],
)
def test_the_same_key_for_a_different_request_is_409(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
    path: str,
    payload: dict[str, Any] | None,
) -> None:
    headers = with_key(recorder, "reused")
    assert client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
    second = interaction(customer_id, **payload) if payload else order(customer_id)
    body = problem(client.post(path, json=second, headers=headers), 409)
    assert body["type"].endswith("idempotency-conflict")
    assert "reused" in body["detail"]
    assert count(session_factory, Record) == 1


def test_keys_are_scoped_to_the_api_key(
    client: TestClient,
    keys: dict[Role, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    for role in (Role.RECORDER, Role.ADMIN):
        headers = {"Authorization": f"Bearer {keys[role]}", "Idempotency-Key": "shared"}
        response = client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert count(session_factory, Record) == 2


def test_a_failed_request_does_not_use_up_its_key(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    headers = with_key(recorder, "fix-and-retry")
    unknown = "6f1c2d4e-0000-4000-8000-000000000000"
    problem(client.post("/v1/interactions", json=interaction(unknown), headers=headers), 404)
    problem(
        client.post("/v1/interactions", json=interaction(customer_id, type=""), headers=headers),
        422,
    )
    assert count(session_factory, IdempotencyEntry) == 0
    fixed = client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
    assert fixed.status_code == 201
    assert "idempotent-replayed" not in fixed.headers


def test_customers_orders_and_batches_are_idempotent(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/customers", {"name": "B", "email": "b@example.com", "external_ref": "b-1"}),
        ("/v1/orders", order(customer_id)),
        ("/v1/interactions/batch", {"items": [interaction(customer_id)] * 3}),
    ]
    for i, (path, payload) in enumerate(requests):
        headers = with_key(recorder, f"k{i}")
        first = client.post(path, json=payload, headers=headers)
        again = client.post(path, json=payload, headers=headers)
        assert first.status_code == again.status_code == 201, again.text
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
    assert count(session_factory, Customer) == 2
    assert count(session_factory, Record) == 4


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9".encode(), "line\x7f"])
def test_a_malformed_key_is_422(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
    key: str | bytes,
) -> None:
    raw_key = key if isinstance(key, bytes) else key.encode()
    headers = [
        (b"Authorization", recorder["Authorization"].encode()),
        (b"Idempotency-Key", raw_key),
    ]
    response = client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
    assert fields(problem(response, 422)) == {"Idempotency-Key"}
    assert count(session_factory, Record) == 0


def test_a_key_of_255_printable_characters_is_fine(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    key = "".join(chr(c) for c in range(0x20, 0x7F)) * 3
    headers = with_key(recorder, key[:255])
    response = client.post("/v1/interactions", json=interaction(customer_id), headers=headers)
    assert response.status_code == 201, response.text


def concurrently(n: int, call: Any) -> list[httpx.Response]:
    """Run `call(i)` in n threads released together."""
    barrier = threading.Barrier(n)

    def run(i: int) -> httpx.Response:
        barrier.wait()
        response: httpx.Response = call(i)
        return response

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_retries_write_once_and_all_get_the_same_answer(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    for attempt in range(5):
        headers = with_key(recorder, f"race-{attempt}")
        body = interaction(customer_id, type=f"race {attempt}")

        def post(_: int, body: dict[str, Any] = body, headers: dict[str, str] = headers) -> Any:
            return client.post("/v1/interactions", json=body, headers=headers)

        responses = concurrently(8, post)
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        assert len({r.content for r in responses}) == 1
        fresh = [r for r in responses if "idempotent-replayed" not in r.headers]
        assert len(fresh) == 1
    assert count(session_factory, Record) == 5
    assert count(session_factory, IdempotencyEntry) == 5


def test_concurrent_different_requests_with_one_key_write_one(
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    session_factory: sessionmaker[Session],
) -> None:
    headers = with_key(recorder, "contested")
    responses = concurrently(
        6,
        lambda i: client.post(
            "/v1/interactions", json=interaction(customer_id, type=f"t{i}"), headers=headers
        ),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409, 409, 409], [r.text for r in responses]
    assert count(session_factory, Record) == 1


def test_concurrent_customers_with_one_key_and_external_ref(
    client: TestClient, recorder: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    headers = with_key(recorder, "new-customer")
    payload = {"name": "C", "email": "c@example.com", "external_ref": "c-1"}
    responses = concurrently(
        6, lambda _: client.post("/v1/customers", json=payload, headers=headers)
    )
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1
    assert count(session_factory, Customer) == 1


@pytest.mark.parametrize(
    "path",
    ["/v1/interactions", "/v1/campaigns/a?b#c\\d/awards", "/v1/x%3Fy", "/v1/caf\u00e9/ß", "/"],
)
def test_the_fingerprinted_path_is_starlettes_url_path(path: str) -> None:
    """`writes.request_path` spares parsing the URL, yet must give exactly `request.url.path`
    (an Idempotency-Key's fingerprint holds it: a difference would turn retries into 409s)."""
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": b"q=1",
        "root_path": "",
        "headers": [(b"host", b"example.com:8000")],
        "server": ("example.com", 8000),
    }
    request = Request(scope)

    assert request_path(request) == request.url.path
