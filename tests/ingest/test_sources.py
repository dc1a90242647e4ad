"""/v1/sources: secrets encrypted at rest and never shown, rotation with a grace period."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import IngestSource, utcnow
from crm_ledger.errors import KeyUnavailable
from crm_ledger.journal.privacy import KeyRing, MasterKey, SecretPurpose, open_secret
from tests.api.helpers import problem
from tests.apps import TestClient
from tests.ingest.conftest import TEST_MASTER_KEY, make_source, webhook_path
from tests.ingest.shops import SHOPIFY_SECRET, body_of, shopify_headers, shopify_order

NEW_SECRET = "shpss_rotated_ffffffffffffffffffffffff"


def test_create_answers_the_webhook_url_and_never_the_secret(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    assert shopify["webhook_url"] == f"http://testserver/v1/webhooks/shopify/{shopify['id']}"
    assert shopify["has_secret"] is True
    listed = client.get("/v1/sources", headers=admin)
    one = client.get(f"/v1/sources/{shopify['id']}", headers=admin)
    for answer in (json.dumps(shopify), listed.text, one.text):
        assert SHOPIFY_SECRET not in answer
    with session_factory() as session:
        stored = session.scalars(select(IngestSource)).one()
    assert stored.secret_ciphertext is not None
    assert SHOPIFY_SECRET.encode() not in stored.secret_ciphertext


def test_sources_need_an_admin_and_something_to_verify_with(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    problem(client.get("/v1/sources"), 401)
    no_secret = client.post("/v1/sources", json={"platform": "shopify", "name": "x"}, headers=admin)
    assert "needs its secret" in problem(no_secret, 422)["detail"]
    bad_key = client.post(
        "/v1/sources",
        json={"platform": "magento", "name": "m", "public_key": "-----BEGIN PUBLIC KEY-----" * 3},
        headers=admin,
    )
    assert "PEM" in problem(bad_key, 422)["detail"]
    problem(
        client.post(
            "/v1/sources",
            json={"platform": "prestashop", "name": "p", "secret": "0123456789"},
            headers=admin,
        ),
        422,
    )


def test_rotation_keeps_the_old_secret_for_the_grace_period_then_refuses_it(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    rotated = client.post(
        f"/v1/sources/{shopify['id']}/rotate", json={"secret": NEW_SECRET}, headers=admin
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["previous_secret_valid_until"] is not None
    body = body_of(shopify_order())

    def send(secret: str) -> int:
        headers = shopify_headers(body, "orders/create", secret=secret)
        return client.post(webhook_path(shopify), content=body, headers=headers).status_code

    assert (send(NEW_SECRET), send(SHOPIFY_SECRET)) == (200, 200)
    with session_factory.begin() as session:
        session.execute(
            update(IngestSource).values(previous_secret_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (send(NEW_SECRET), send(SHOPIFY_SECRET)) == (200, 401)


def test_a_sealed_secret_opens_only_on_its_own_source_and_under_its_own_master_key(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    created = client.post(
        "/v1/sources",
        json={"platform": "shopify", "name": "Tea shop", "secret": "s3cret-value"},
        headers=admin,
    ).json()
    with session_factory() as session:
        row = session.scalars(select(IngestSource).where(IngestSource.id == created["id"])).one()
    keyring = KeyRing(MasterKey(base64.b64decode(TEST_MASTER_KEY)))  # the app's master key
    sealed = row.secret_ciphertext
    assert sealed is not None and b"s3cret-value" not in sealed
    shop = SecretPurpose.SHOP_SOURCE
    assert open_secret(keyring, purpose=shop, bound_to=row.id, sealed=sealed) == "s3cret-value"
    with pytest.raises(KeyUnavailable):
        open_secret(keyring, purpose=shop, bound_to="another-source", sealed=sealed)
    with pytest.raises(KeyUnavailable):
        open_secret(keyring, purpose=SecretPurpose.WEBHOOK_SIGNING, bound_to=row.id, sealed=sealed)
    with pytest.raises(KeyUnavailable):  # another master key: not even its key id is known
        open_secret(KeyRing.generate(), purpose=shop, bound_to=row.id, sealed=sealed)


def test_rotate_and_create_are_idempotent(
    client: TestClient, admin: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    headers = admin | {"Idempotency-Key": "source-1"}
    body = {"platform": "woocommerce", "name": "Hopper Books", "secret": "wc-secret-123"}
    first = client.post("/v1/sources", json=body, headers=headers)
    again = client.post("/v1/sources", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    with session_factory() as session:
        assert len(session.scalars(select(IngestSource)).all()) == 1


def test_delete_is_404_for_an_unknown_source(client: TestClient, admin: dict[str, str]) -> None:
    problem(client.delete("/v1/sources/0b6a3c1e-4f4e-4d3c-9c1e-2f0a5b7c8d9e", headers=admin), 404)
    made = make_source(client, admin, platform="woocommerce", name="w", secret="0123456789")
    assert client.delete(f"/v1/sources/{made['id']}", headers=admin).json()["deleted_at"]


def test_every_status_the_endpoints_answer_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    webhook = paths["/v1/webhooks/{platform}/{source_id}"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413"} <= webhook.keys()
    assert "security" not in paths["/v1/webhooks/{platform}/{source_id}"]["post"]
    retry = paths["/v1/sources/{source_id}/deliveries/{delivery_id}/retry"]["post"]["responses"]
    assert {"200", "401", "403", "404", "409"} <= retry.keys()
    assert {"201", "401", "403", "422"} <= paths["/v1/sources"]["post"]["responses"].keys()
