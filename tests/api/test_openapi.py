"""Every status an operation can answer is in the OpenAPI document (issue 10, finding 6).

The statuses an operation must document are derived from its dependencies, independently of
the `responses=` tables: an API key brings 401 and 429, a role guard 403, a request body 413
and 422, any parameter 422, an `Idempotency-Key` header 409. Each documented problem status
names the problem media type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security.base import SecurityBase

from crm_ledger.api.problems import PROBLEM_MEDIA_TYPE

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
        if getattr(dependant.call, "__qualname__", "").startswith("require_roles."):
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
