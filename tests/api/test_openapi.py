"""Every status an operation can answer is in the OpenAPI document (issue 10, finding 6), and
every success response says what its body is (issue 9); every route of the app is in the
document but the pages for people (the console, /docs).

The statuses an operation must document are derived from its dependencies, independently of
the `responses=` tables: an API key brings 401 and 429, a role guard 403, a request body 413
and 422, any parameter 422, an `Idempotency-Key` header 409. Each documented problem status
names the problem media type. Each 2xx names its content type and, for JSON, the model that
describes it; any other content type says what it is; a 204 has no body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security.base import SecurityBase
from starlette.responses import Response

from crm_ledger.api.problems import PROBLEM_MEDIA_TYPE
from crm_ledger.schemas import RecordPublic

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def expected_statuses(route: Any) -> set[int]:
    """The problem statuses `route`'s dependencies can raise."""
    expected: set[int] = set()
    for dependant in _dependants(route.dependant):
        if isinstance(dependant.call, SecurityBase):
            expected |= {401, 429}
        # A role guard, or the `Writes` dependency of `api.writes`, which runs one itself.
        if getattr(dependant.call, "__qualname__", "").startswith(
            ("require_roles.", "writes_for.")
        ):
            expected.add(403)
        if dependant.path_params or dependant.query_params or dependant.header_params:
            expected.add(422)
        if any(p.alias.lower() == "idempotency-key" for p in dependant.header_params):
            expected.add(409)
    if route.body_field is not None:
        expected |= {413, 422}
    return expected


def operations(app: FastAPI) -> Iterator[tuple[Any, str]]:
    """Each API route of the schema (as included, prefixes and all) and each of its methods."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            for method in sorted(route.methods):
                yield route, method.lower()


def test_every_operation_documents_the_statuses_its_dependencies_raise(
    app: FastAPI, client: TestClient
) -> None:
    document: dict[str, Any] = client.get("/openapi.json").json()
    missing = {}
    checked = 0
    for route, method in operations(app):
        documented = {int(s) for s in document["paths"][route.path_format][method]["responses"]}
        lacking = expected_statuses(route) - documented
        if lacking:
            missing[f"{method.upper()} {route.path_format}"] = sorted(lacking)
        checked += 1

    assert checked > 30
    assert missing == {}


def test_the_walk_finds_what_it_looks_for(app: FastAPI) -> None:
    """The derivation sees keys, roles, bodies and Idempotency-Keys (a walk that found nothing
    would pass the test above vacuously)."""
    by_path = {
        (route.path_format, method): expected_statuses(route) for route, method in operations(app)
    }

    assert by_path[("/v1/customers", "post")] >= {401, 403, 409, 413, 422, 429}
    assert by_path[("/v1/customers", "get")] >= {401, 422, 429}
    assert 403 not in by_path[("/v1/customers", "get")]
    assert by_path[("/healthz", "get")] == set()


def test_problem_statuses_name_the_problem_media_type(client: TestClient) -> None:
    document: dict[str, Any] = client.get("/openapi.json").json()
    wrong = [
        (path, method, status)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status, response in operation["responses"].items()
        if status in {"401", "403", "409", "413", "429"}
        and PROBLEM_MEDIA_TYPE not in response.get("content", {})
    ]

    assert wrong == []


#: FastAPI's description of a success response the route did not describe.
GENERIC_DESCRIPTION = "Successful Response"


def undescribed_success(status: str, response: dict[str, Any]) -> str | None:
    """What a 2xx response of the document fails to say about its body, or None."""
    content: dict[str, Any] = response.get("content", {})
    described = response.get("description", GENERIC_DESCRIPTION) != GENERIC_DESCRIPTION
    if status == "204":
        return "a 204 with a body" if content else None
    if not content:
        return "no content type"
    for media_type, body in content.items():
        schema = body.get("schema") or {}
        if media_type == "application/json":
            if schema in ({}, {"type": "string"}):
                return "JSON without a schema"
            if "$ref" not in schema:
                return "JSON of no model"
        elif not described:
            return f"{media_type} without a description"
    return None


def undescribed_successes(document: dict[str, Any]) -> tuple[dict[str, str], int]:
    """Each operation's success response that does not describe its body, and how many 2xx
    responses were looked at."""
    undescribed: dict[str, str] = {}
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    checked += 1
                    why = undescribed_success(status, response)
                    if why is not None:
                        undescribed[f"{method.upper()} {path} {status}"] = why
    return undescribed, checked


def test_every_success_response_describes_its_body(client: TestClient) -> None:
    document: dict[str, Any] = client.get("/openapi.json").json()

    undescribed, checked = undescribed_successes(document)

    assert checked > 60
    assert undescribed == {}


def test_success_bodies_are_the_models_the_routes_answer_with(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    created = paths["/v1/interactions"]["post"]["responses"]["201"]["content"]
    assert created["application/json"]["schema"] == {"$ref": "#/components/schemas/RecordPublic"}
    receipt = paths["/v1/records/{record_id}/receipt"]["get"]["responses"]
    assert "crm-ledger/receipt/v1" in receipt["200"]["description"]
    assert receipt["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ReceiptPublic")
    assert receipt["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ReceiptPending"
    )
    bundle = paths["/v1/audit/export"]["get"]["responses"]["200"]
    assert list(bundle["content"]) == ["application/jsonl"]
    deleted = paths["/v1/webhook-subscriptions/{subscription_id}"]["delete"]["responses"]["204"]
    assert "content" not in deleted


def test_the_success_check_finds_undescribed_bodies() -> None:
    """The check above fails for bodies nobody described (so its passing means something)."""
    app = FastAPI()

    @app.get("/raw", response_class=Response)
    def raw() -> Response:
        return Response(b"{}")

    @app.get("/text", response_class=PlainTextResponse)
    def text() -> str:
        return "hello"

    @app.get("/dict")
    def untyped() -> Response:
        return Response(b"{}", media_type="application/json")

    @app.get("/model", response_model=RecordPublic, response_class=Response)
    def model_without_media_type() -> Response:
        return Response(b"{}")

    an_object = {"application/json": {"schema": {"type": "object"}}}

    @app.get("/described", responses={200: {"description": "The receipt", "content": an_object}})
    def described() -> Response:
        return Response(b"{}")

    bundle_response = {"description": "A bundle", "content": {"application/jsonl": {}}}

    @app.get("/bundle", response_class=Response, responses={200: bundle_response})
    def bundle() -> Response:
        return Response(b"{}")

    @app.get("/typed", response_model=RecordPublic)
    def typed() -> Response:
        return Response(b"{}")

    undescribed, checked = undescribed_successes(app.openapi())

    assert checked == 7
    assert undescribed == {
        "GET /raw 200": "no content type",
        "GET /text 200": "text/plain without a description",
        "GET /dict 200": "JSON without a schema",
        "GET /model 200": "no content type",
        "GET /described 200": "JSON of no model",
    }


@pytest.mark.parametrize(
    ("path", "method", "status", "model"),
    [
        ("/healthz", "get", "200", "Health"),
        ("/readyz", "get", "200", "Readiness"),
        ("/readyz", "get", "503", "Readiness"),
        ("/v1/audit/verify", "post", "200", "RecordCheckPublic"),
        ("/v1/audit/customers/{customer_id}", "get", "200", "CustomerAuditPublic"),
        ("/v1/audit/ledger", "get", "200", "LedgerAuditPublic"),
        ("/v1/audit/ledger", "post", "202", "LedgerAuditPublic"),
        ("/v1/audit/digest", "get", "200", "DigestPublic"),
        ("/v1/audit/digest/verify", "post", "200", "DigestCheckPublic"),
    ],
)
def test_health_and_audit_answers_are_models(
    client: TestClient, path: str, method: str, status: str, model: str
) -> None:
    """The answers that were JSON objects of no model (issue 9) now name theirs."""
    responses = client.get("/openapi.json").json()["paths"][path][method]["responses"]

    schema = responses[status]["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{model}"}


#: Routes left out of the OpenAPI document on purpose: pages for people, not the API.
PAGES = {"/", "/docs"}


def test_every_route_of_the_app_is_in_the_document_but_the_pages(
    app: FastAPI, client: TestClient
) -> None:
    """A route hidden with `include_in_schema=False` would escape every check above."""
    document: dict[str, Any] = client.get("/openapi.json").json()
    hidden = set()
    walked = 0
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        walked += 1
        if not route.include_in_schema:
            hidden.add(route.path_format)
        else:
            for method in route.methods:
                assert method.lower() in document["paths"][route.path_format]

    assert walked > 60
    assert hidden == PAGES
