"""The rough edges a new user hit: /docs offline, examples on every body, rates as strings,
non-UUID path ids answered 422."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from crm_ledger.api.path_ids import PATH_IDS, check_path_ids
from crm_ledger.api.routes import customers, records
from crm_ledger.app import create_app
from crm_ledger.ingest.schemas import SourceCreate, SourceRotate
from crm_ledger.journal.schemas import (
    CustomerCreate,
    InteractionBatchCreate,
    InteractionCreate,
    OrderCreate,
)
from crm_ledger.loyalty.schemas import AwardCreate, CampaignCreate, RedemptionCreate, WalletLink
from crm_ledger.outbound.webhooks.schemas import (
    WebhookReplay,
    WebhookSubscriptionCreate,
    WebhookSubscriptionUpdate,
)
from crm_ledger.schemas import RecordVerifyRequest
from crm_ledger.verifier.digest import Digest
from tests.apps import api_settings

MODELS = {
    model.__name__: model
    for model in (
        CustomerCreate,
        InteractionCreate,
        InteractionBatchCreate,
        OrderCreate,
        CampaignCreate,
        AwardCreate,
        RedemptionCreate,
        WalletLink,
        RecordVerifyRequest,
        SourceCreate,
        SourceRotate,
        WebhookSubscriptionCreate,
        WebhookSubscriptionUpdate,
        WebhookReplay,
    )
}


def test_docs_are_served_from_the_package_without_any_other_host(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and all(url.startswith("/") for url in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert "swagger-ui-bundle.js" in page.text


def _request_bodies(app: FastAPI) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    document = app.openapi()
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body is None:
                continue
            for media in body["content"].values():
                schema = media["schema"]
                name = schema.get("$ref", "").rsplit("/", 1)[-1]
                resolved = document["components"]["schemas"].get(name, schema)
                found.append((f"{method.upper()} {path} {name}", resolved, media))
    return found


def test_every_request_body_has_an_example_the_api_accepts(app: FastAPI) -> None:
    bodies = _request_bodies(app)
    assert len(bodies) >= 10
    for where, schema, media in bodies:
        examples = schema.get("examples") or media.get("examples") or []
        assert examples, f"{where} has no example"
        name = where.rsplit(" ", 1)[-1]
        for example in examples:
            if name in MODELS:
                MODELS[name].model_validate(example)
            else:
                Digest.from_json(example)


def test_rates_are_strings_in_the_schema(app: FastAPI) -> None:
    schemas = app.openapi()["components"]["schemas"]
    assert schemas["OrderTotalRule"]["properties"]["points_per_unit"]["type"] == "string"
    assert schemas["TagMultiplierRule"]["properties"]["multiplier"]["type"] == "string"


def test_a_non_uuid_path_id_is_a_422_naming_the_parameter(
    client: TestClient, recorder: dict[str, str], auditor: dict[str, str]
) -> None:
    for path, headers in (
        ("/v1/records/hello", recorder),
        ("/v1/records/hello/receipt", recorder),
        ("/v1/customers/hello", recorder),
        ("/v1/audit/customers/not-an-id", auditor),
    ):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 422, (path, answer.text)
        problem = answer.json()
        assert problem["errors"][0]["location"] == "path"
        assert problem["errors"][0]["field"].endswith("_id")
        assert "must be an id such as" in problem["detail"]
        said = problem["detail"] + str(problem["errors"])
        assert "hello" not in said and "not-an-id" not in said
    assert client.get("/v1/records/hello").status_code == 401
    missing = client.get("/v1/records/0192f1c4-6a4e-7c3a-9b1e-2f6d1a0b9c8d", headers=recorder)
    assert missing.status_code == 404


def test_every_operation_with_an_id_in_its_path_documents_the_422(app: FastAPI) -> None:
    document = app.openapi()
    missing = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if any(f"{{{name}}}" in path for name in PATH_IDS)
        and "422" not in operation.get("responses", {})
    ]
    assert missing == []


def test_every_route_with_an_id_in_its_path_checks_it(app: FastAPI) -> None:
    """`check_ids_of` put `check_path_ids` on each route with an id in its path (and only
    there: it costs every request it runs on)."""
    checked, unchecked = set(), set()
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        has_check = any(sub.call is check_path_ids for sub in route.dependant.dependencies)
        if PATH_IDS & set(route.param_convertors):
            (checked if has_check else unchecked).add(route.path_format)
        else:
            assert not has_check, route.path_format

    assert unchecked == set()
    assert {"/v1/records/{record_id}", "/v1/customers/{customer_id}"} <= checked
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute):
            checks = [sub for sub in route.dependant.dependencies if sub.call is check_path_ids]
            assert len(checks) <= 1, route.path_format


def test_apps_made_again_in_one_process_check_each_path_id_once(tmp_path: Path) -> None:
    """The routers are module-level: each app including them again must not add another
    check (the test suite makes thousands of apps in one process)."""
    for n in range(3):
        settings = api_settings(tmp_path / str(n), f"sqlite:///{tmp_path}/{n}.sqlite3")
        create_app(settings, background=False).state.runtime.engine.dispose()
    for router in (customers.router, records.router):
        for route in router.routes:
            assert isinstance(route, APIRoute)
            checks = [d for d in route.dependencies if d.dependency is check_path_ids]
            assert len(checks) == (1 if PATH_IDS & route.param_convertors.keys() else 0)
