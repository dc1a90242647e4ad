"""Retries, Idempotency-Key and problem mapping, against httpx's MockTransport: which requests
are sent, with which key, and how long the client was told to wait (never measured)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from crm_ledger.client import (
    Client,
    ConnectionFailed,
    IdempotencyConflict,
    NotAnchoredYet,
    ServiceUnavailable,
)

CUSTOMER = {
    "id": "0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d",
    "name": "Ada",
    "email": "ada@example.com",
    "phone": None,
    "external_ref": None,
    "tags": [],
    "created_at": "2026-11-25T10:00:00.000000Z",
    "erased_at": None,
}


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every back-off the client waited, instead of waiting it."""
    waits: list[float] = []
    monkeypatch.setattr("time.sleep", waits.append)
    return waits


def scripted(
    answers: list[Callable[[httpx.Request], httpx.Response]], seen: list[httpx.Request]
) -> Client:
    """A client whose transport answers each request with the next of `answers`."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)(request)

    return Client("http://ledger.test", api_key="crml_x", transport=httpx.MockTransport(handle))


def status(
    code: int, headers: dict[str, str] | None = None, body: object = None
) -> Callable[[httpx.Request], httpx.Response]:
    """An answer with `code`, `headers` and a JSON `body`."""
    content = json.dumps(body if body is not None else {"title": "x", "detail": "y"}).encode()
    return lambda _request: httpx.Response(code, headers=headers, content=content)


def refused(request: httpx.Request) -> httpx.Response:
    """A connection that could not be made."""
    raise httpx.ConnectError("connection refused", request=request)


def test_a_write_is_retried_with_the_same_key_waiting_what_retry_after_says(
    slept: list[float],
) -> None:
    seen: list[httpx.Request] = []
    client = scripted(
        [
            status(503, {"Retry-After": "2"}),
            refused,
            status(429, {"Retry-After": "7"}),
            status(201, body=CUSTOMER),
        ],
        seen,
    )
    created = client.customers.create(name="Ada", email="ada@example.com")
    assert created.id == CUSTOMER["id"]
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 4 and len(keys) == 1 and keys != {""}
    assert slept[0] == 2.0 and slept[2] == 7.0
    assert 0 <= slept[1] <= 0.5  # back-off with jitter (0.25 s * 2) after the refused connection
    assert seen[0].headers["Authorization"] == "Bearer crml_x"


def test_the_callers_key_is_used_and_reads_carry_none(slept: list[float]) -> None:
    seen: list[httpx.Request] = []
    client = scripted([status(201, body=CUSTOMER), refused, status(200, body=CUSTOMER)], seen)
    client.customers.create(name="Ada", email="ada@example.com", idempotency_key="mine-1")
    client.customers.get(CUSTOMER["id"])
    assert seen[0].headers["Idempotency-Key"] == "mine-1"
    assert "Idempotency-Key" not in seen[1].headers and len(seen) == 3


def test_giving_up_raises_the_last_problem_or_connection_failed(slept: list[float]) -> None:
    seen: list[httpx.Request] = []
    client = scripted([status(503, {"Retry-After": "999"})] * 6, seen)
    with pytest.raises(ServiceUnavailable) as unavailable:
        client.customers.get(CUSTOMER["id"])
    assert unavailable.value.retry_after == 999 and len(seen) == 6
    assert slept == [60.0] * 5  # Retry-After is capped at max_retry_after

    seen.clear()
    client = scripted([refused] * 6, seen)
    with pytest.raises(ConnectionFailed, match="after 6 attempts"):
        client.customers.get(CUSTOMER["id"])


def test_a_conflict_is_not_retried_and_names_the_idempotency_problem(slept: list[float]) -> None:
    seen: list[httpx.Request] = []
    problem = {
        "type": "urn:crm-ledger:problem:idempotency-conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "Idempotency-Key 'k' was already used for a different request",
    }
    client = scripted([status(409, body=problem)], seen)
    with pytest.raises(IdempotencyConflict, match="already used"):
        client.customers.create(name="Ada", email="ada@example.com", idempotency_key="k")
    assert len(seen) == 1 and slept == []


def test_receipt_waits_while_pending_and_says_so_without_wait(slept: list[float]) -> None:
    pending = status(202, {"Retry-After": "1"}, {"status": "pending"})
    receipt = {"format": "crm-ledger/receipt/v1", "record_id": CUSTOMER["id"]}
    seen: list[httpx.Request] = []
    client = scripted([pending, pending, status(200, body=receipt)], seen)
    assert client.records.receipt(CUSTOMER["id"], wait=True).record_id == CUSTOMER["id"]
    assert slept == [1.0, 1.0]
    client = scripted([pending], seen)
    with pytest.raises(NotAnchoredYet):
        client.records.receipt(CUSTOMER["id"])
