"""Request ids and the access log line: `X-Request-ID` in and out, ECS fields, nothing personal."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from crm_ledger.observability.logs import sane_request_id


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "crm_ledger.access"]


def test_a_sane_request_id_is_kept_and_returned(
    client: TestClient, recorder: dict[str, str], customer_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crm_ledger.access")
    answer = client.get(
        f"/v1/customers/{customer_id}", headers={**recorder, "X-Request-ID": "edge-7f3a:1"}
    )
    assert answer.status_code == 200
    assert answer.headers["X-Request-ID"] == "edge-7f3a:1"
    (line,) = [r for r in _access(caplog) if getattr(r, "http.request.id") == "edge-7f3a:1"]
    assert getattr(line, "http.request.method") == "GET"
    assert getattr(line, "url.path") == f"/v1/customers/{customer_id}"
    assert getattr(line, "http.response.status_code") == 200
    assert isinstance(getattr(line, "event.duration"), int)
    assert getattr(line, "user.roles") == ["recorder"]
    assert len(getattr(line, "user.id")) == 36
    assert recorder["Authorization"][7:] not in str(line.__dict__)


@pytest.mark.parametrize("incoming", [b"has space", b"x" * 129, b"", b"-leading-dash", b"\xc3\xa9"])
def test_an_unusable_request_id_is_replaced(
    client: TestClient, incoming: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crm_ledger.access")
    answer = client.get("/healthz", headers={b"X-Request-ID": incoming})
    returned = answer.headers["X-Request-ID"]
    assert returned.encode() != incoming and len(returned) == 32
    assert sane_request_id(returned) == returned
    assert [getattr(r, "http.request.id") for r in _access(caplog)] == [returned]


def test_a_path_a_client_typed_is_logged_as_its_route(
    client: TestClient, recorder: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crm_ledger.access")
    assert client.get("/v1/customers/ada@example.com", headers=recorder).status_code == 422
    assert client.get("/no/such/Ada Lovelace").status_code == 404
    paths = [getattr(r, "url.path") for r in _access(caplog)]
    assert paths == ["/v1/customers/{customer_id}", "unmatched"]
    assert "ada@example.com" not in str([r.__dict__ for r in caplog.records])
