"""/healthz, /readyz, /metrics, and problem details for routing and unexpected errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI

from crm_ledger.api.routes.health import Health, Readiness
from crm_ledger.db.session import make_engine, make_session_factory
from tests.api.helpers import answered_as, interaction, problem

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def test_healthz(client: TestClient) -> None:
    assert answered_as(Health, client.get("/healthz")) == {"status": "ok"}


def fake_chain_status(app: FastAPI, monkeypatch: pytest.MonkeyPatch, **status: object) -> None:
    """Make the runtime report `status`, whatever keeps it there."""
    monkeypatch.setattr(type(app.state.runtime), "chain_status", property(lambda _: dict(status)))


def test_readyz_reports_the_anchoring_backlog(
    app: FastAPI,
    client: TestClient,
    recorder: dict[str, str],
    customer_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_chain_status(app, monkeypatch, state="running", chain_id=31337)
    body = answered_as(Readiness, client.get("/readyz"))
    assert body["status"] == "ready"
    assert body["anchoring"] == {"pending_records": 0, "lag_seconds": 0.0}
    for _ in range(3):
        client.post("/v1/interactions", json=interaction(customer_id), headers=recorder)
    body = answered_as(Readiness, client.get("/readyz"))
    assert body["database"] == {"ok": True}
    assert body["chain"] == {"state": "running", "chain_id": 31337}
    assert body["anchoring"]["pending_records"] == 3
    assert body["anchoring"]["lag_seconds"] >= 0


def test_readyz_is_503_when_anchoring_halted(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_chain_status(app, monkeypatch, state="halted", message="chain was reset")
    body = answered_as(Readiness, client.get("/readyz"), 503)
    assert body["status"] == "unavailable"
    assert body["chain"]["message"] == "chain was reset"


def test_readyz_is_503_when_the_database_is_unreachable(app: FastAPI, client: TestClient) -> None:
    runtime = app.state.runtime
    broken = make_engine("sqlite:////nonexistent-dir/for/sure/ledger.sqlite")
    original = runtime.session_factory
    runtime.session_factory = make_session_factory(broken)
    try:
        response = client.get("/readyz")
    finally:
        runtime.session_factory = original
        broken.dispose()
    assert answered_as(Readiness, response, 503)["database"]["ok"] is False


def test_metrics_count_requests_by_route_template_and_records_by_kind(
    client: TestClient, recorder: dict[str, str], customer_id: str
) -> None:
    client.post("/v1/interactions", json=interaction(customer_id), headers=recorder)
    client.get(f"/v1/customers/{customer_id}", headers=recorder)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'crm_ledger_http_requests_total{method="GET",route="/v1/customers/{customer_id}",'
        'status="200"}' in text
    )
    assert 'crm_ledger_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text
    assert 'crm_ledger_records_written_total{kind="interaction"}' in text
    assert customer_id not in text
    for name in (
        "crm_ledger_anchoring_lag_seconds",
        "crm_ledger_records_pending",
        "crm_ledger_batches_anchored_total",
        "crm_ledger_anchor_gas_used_total",
    ):
        assert name in text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("DELETE", "/v1/customers", 405), ("PUT", "/healthz", 405)],
)
def test_routing_errors_are_problems(
    client: TestClient, method: str, path: str, status: int
) -> None:
    problem(client.request(method, path), status)


def test_an_unexpected_error_is_a_500_problem_without_a_traceback(
    app: FastAPI, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/explode", explode)
    response = client.get("/explode")
    body = problem(response, 500)
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert body["error_id"] in caplog.text
    assert "secret internals" in caplog.text


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/customers", "/v1/interactions", "/v1/interactions/batch", "/v1/orders"} <= set(
        spec["paths"]
    )
    assert "ApiKey" in spec["components"]["securitySchemes"]
