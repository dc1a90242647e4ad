"""The webhook endpoint's cache of source keys: a source deleted or rotated by another process
sharing the database takes effect at once, and a rotated-out secret stops after its grace."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.webhooks import source_key_cache
from crm_ledger.app import create_app
from crm_ledger.db.models import IngestDelivery
from crm_ledger.ingest.signatures import Platform
from crm_ledger.ingest.sources import VerifyingKeys
from crm_ledger.journal.keys import Role, create_api_key
from tests.api.helpers import problem
from tests.ingest.conftest import TestClient, ingest_settings, make_source, webhook_path
from tests.ingest.shops import (
    SHOPIFY_SECRET,
    WOO_SECRET,
    body_of,
    shopify_headers,
    shopify_order,
)

NEW_SECRET = "shpss_rotated_ffffffffffffffffffffffff"


@pytest.fixture
def two_apps(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    """Two instances of the service on one database (two processes, as far as caches go);
    a rotation grace of 0.5 s."""
    apps: list[FastAPI] = []
    for _ in range(2):
        settings = ingest_settings(tmp_path, database_url, ingest_rotation_grace_seconds=0.5)
        apps.append(create_app(settings, background=False))
    try:
        with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
            yield first, second
    finally:
        for app in apps:
            app.state.runtime.engine.dispose()


def _admin(client: TestClient) -> dict[str, str]:
    factory: sessionmaker[Session] = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
    with factory.begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="admin")
    return {"Authorization": f"Bearer {key}"}


def _send(client: TestClient, source: dict[str, Any], secret: str, n: int) -> Any:
    body = body_of(shopify_order(id=820_982_911_946_154_500 + n))
    headers = shopify_headers(body, "orders/create", secret=secret)
    return client.post(webhook_path(source), content=body, headers=headers)


def _stored(client: TestClient) -> int:
    factory: sessionmaker[Session] = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(IngestDelivery)) or 0)


def test_a_rotation_elsewhere_refuses_the_old_secret_after_its_grace(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    admin_app, webhook_app = two_apps
    admin = _admin(admin_app)
    source = make_source(
        admin_app, admin, platform="shopify", name="Lovelace Prints", secret=SHOPIFY_SECRET
    )
    assert _send(webhook_app, source, SHOPIFY_SECRET, 1).status_code == 200
    cache = source_key_cache(webhook_app.app)  # type: ignore[arg-type]
    cached = cache.get("shopify", source["id"])
    assert cached is not None and cached.secret == SHOPIFY_SECRET

    rotated = admin_app.post(
        f"/v1/sources/{source['id']}/rotate", json={"secret": NEW_SECRET}, headers=admin
    )
    assert rotated.status_code == 200, rotated.text
    # The other instance still holds the old keys; the new secret verifies after a fresh read,
    # the old one in its grace.
    assert cache.get("shopify", source["id"]) is cached
    assert _send(webhook_app, source, NEW_SECRET, 2).status_code == 200
    assert _send(webhook_app, source, SHOPIFY_SECRET, 3).status_code == 200
    time.sleep(0.6)  # the grace (0.5 s) ends
    assert _send(webhook_app, source, NEW_SECRET, 4).status_code == 200
    refused = _send(webhook_app, source, SHOPIFY_SECRET, 5)
    assert "signature" in problem(refused, 401)["detail"]
    assert _stored(admin_app) == 4


def test_a_rotation_elsewhere_is_seen_by_the_transaction_that_stores(
    tmp_path: Path, database_url: str, two_apps: tuple[TestClient, TestClient]
) -> None:
    """Keys cached before a rotation with no grace verify the old signature; the insert's
    transaction sees the rotation, stores nothing, and the fresh keys refuse it."""
    admin_app, webhook_app = two_apps
    admin = _admin(admin_app)
    source = make_source(admin_app, admin, platform="shopify", name="Tea", secret=SHOPIFY_SECRET)
    assert _send(webhook_app, source, SHOPIFY_SECRET, 1).status_code == 200
    cached = source_key_cache(webhook_app.app).get("shopify", source["id"])  # type: ignore[arg-type]
    assert cached is not None
    no_grace = ingest_settings(tmp_path, database_url, ingest_rotation_grace_seconds=0)
    other = create_app(no_grace, background=False)
    try:
        with TestClient(other) as rotating:
            answer = rotating.post(
                f"/v1/sources/{source['id']}/rotate", json={"secret": NEW_SECRET}, headers=admin
            )
            assert answer.status_code == 200, answer.text
    finally:
        other.state.runtime.engine.dispose()
    refused = _send(webhook_app, source, SHOPIFY_SECRET, 2)
    problem(refused, 401)
    assert _stored(admin_app) == 1
    assert _send(webhook_app, source, NEW_SECRET, 3).status_code == 200
    assert _stored(admin_app) == 2


def test_a_source_deleted_elsewhere_stops_accepting_at_once(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    admin_app, webhook_app = two_apps
    admin = _admin(admin_app)
    source = make_source(admin_app, admin, platform="shopify", name="Tea", secret=SHOPIFY_SECRET)
    assert _send(webhook_app, source, SHOPIFY_SECRET, 1).status_code == 200
    assert source_key_cache(webhook_app.app).get("shopify", source["id"]) is not None  # type: ignore[arg-type]
    deleted = admin_app.delete(f"/v1/sources/{source['id']}", headers=admin)
    assert deleted.status_code in (200, 204), deleted.text
    problem(_send(webhook_app, source, SHOPIFY_SECRET, 2), 404)
    assert _stored(admin_app) == 1


def test_a_woocommerce_ping_to_a_source_deleted_elsewhere_is_404(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    admin_app, webhook_app = two_apps
    admin = _admin(admin_app)
    source = make_source(admin_app, admin, platform="woocommerce", name="Tea", secret=WOO_SECRET)
    ping = {"Content-Type": "application/x-www-form-urlencoded"}
    path = webhook_path(source)
    assert webhook_app.post(path, content=b"webhook_id=17", headers=ping).status_code == 200
    assert source_key_cache(webhook_app.app).get("woocommerce", source["id"]) is not None  # type: ignore[arg-type]
    assert admin_app.delete(f"/v1/sources/{source['id']}", headers=admin).status_code in (200, 204)
    problem(webhook_app.post(path, content=b"webhook_id=17", headers=ping), 404)


def test_verifying_keys_never_show_their_secrets_in_a_repr() -> None:
    keys = VerifyingKeys(
        source_pk=1,
        source_id="src",
        platform=Platform.SHOPIFY,
        secret="shpss_current_secret",
        previous_secret="shpss_previous_secret",
        previous_expires_at=None,
        public_key=None,
        stored=(b"sealed",),
    )
    shown = repr(keys)
    assert "src" in shown
    assert "shpss_" not in shown and "sealed" not in shown
