"""The webhook endpoints: signatures, the inbox, duplicates, pings, limits (both databases)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import IngestDelivery
from crm_ledger.ingest.signatures import hmac_sha256_base64
from tests.api.helpers import problem
from tests.apps import TestClient
from tests.ingest.conftest import webhook_path
from tests.ingest.shops import (
    MAGENTO_SECRET,
    MagentoKeys,
    body_of,
    magento_order_event,
    shopify_headers,
    shopify_order,
    woo_headers,
    woo_order,
)


def stored(session_factory: sessionmaker[Session]) -> list[IngestDelivery]:
    with session_factory() as session:
        return list(session.scalars(select(IngestDelivery).order_by(IngestDelivery.pk)))


def test_shopify_order_is_stored_with_its_raw_body_and_answered_200(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of(shopify_order())
    headers = shopify_headers(
        body, "orders/create", webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    )
    response = client.post(webhook_path(shopify), content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": True,
        "duplicate": False,
        "delivery_id": "event:event-of-b54557e4-bdd9-4b37-8a5f-bf7d70bcd043:orders/create",
        "op": "success",
    }
    [delivery] = stored(session_factory)
    assert delivery.body == body
    assert delivery.topic == "orders/create"
    assert delivery.status == "pending"


def test_a_bad_or_missing_signature_is_401_and_nothing_is_stored(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of(shopify_order())
    forged = shopify_headers(body, "orders/create", secret="not-the-shop-secret")
    problem(client.post(webhook_path(shopify), content=body, headers=forged), 401)
    missing = shopify_headers(body, "orders/create")
    del missing["X-Shopify-Hmac-Sha256"]
    problem(client.post(webhook_path(shopify), content=body, headers=missing), 401)
    # Signed, then changed in transit: one cent more.
    tampered = body.replace(b'"199.00"', b'"199.01"')
    signed_original = shopify_headers(body, "orders/create")
    problem(client.post(webhook_path(shopify), content=tampered, headers=signed_original), 401)
    garbage = shopify_headers(body, "orders/create") | {"X-Shopify-Hmac-Sha256": "%%%"}
    problem(client.post(webhook_path(shopify), content=body, headers=garbage), 401)
    assert stored(session_factory) == []


def test_unknown_source_or_platform_is_404(
    client: TestClient, shopify: dict[str, Any], woo: dict[str, Any]
) -> None:
    body = body_of(shopify_order())
    headers = shopify_headers(body, "orders/create")
    unknown = "/v1/webhooks/shopify/0b6a3c1e-4f4e-4d3c-9c1e-2f0a5b7c8d9e"
    problem(client.post(unknown, content=body, headers=headers), 404)
    problem(client.post("/v1/webhooks/shopify/not-a-uuid", content=body, headers=headers), 404)
    problem(client.post(f"/v1/webhooks/bigcommerce/{shopify['id']}", content=body), 404)
    # A Shopify delivery posted to the WooCommerce source's id under /shopify/.
    wrong = problem(
        client.post(f"/v1/webhooks/shopify/{woo['id']}", content=body, headers=headers), 404
    )
    assert "woocommerce" in wrong["detail"]


def test_a_body_over_the_limit_is_413(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    order = shopify_order(note="x" * (1024 * 1024 + 10))
    body = body_of(order)
    response = client.post(
        webhook_path(shopify), content=body, headers=shopify_headers(body, "orders/create")
    )
    problem(response, 413)
    assert stored(session_factory) == []


def test_the_same_delivery_id_twice_is_stored_once(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of(shopify_order())
    headers = shopify_headers(body, "orders/create", webhook_id="retry-me")
    first = client.post(webhook_path(shopify), content=body, headers=headers)
    again = client.post(webhook_path(shopify), content=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert len(stored(session_factory)) == 1


def test_the_same_shopify_event_through_two_subscriptions_is_stored_once(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of(shopify_order())
    for webhook_id in ("subscription-a", "subscription-b"):
        headers = shopify_headers(
            body,
            "orders/create",
            webhook_id=webhook_id,
            event_id="98880550-7158-44d4-b7cd-2c97c8a091b5",
        )
        assert client.post(webhook_path(shopify), content=body, headers=headers).status_code == 200
    assert len(stored(session_factory)) == 1


def test_concurrent_identical_deliveries_are_stored_once(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of(shopify_order())
    headers = shopify_headers(body, "orders/create", webhook_id="raced")
    answers: list[int] = []
    start = threading.Barrier(8)

    def send() -> None:
        start.wait()
        answers.append(
            client.post(webhook_path(shopify), content=body, headers=headers).status_code
        )

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 8
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(IngestDelivery)) == 1


def test_woocommerce_ping_is_answered_200_and_not_stored(
    client: TestClient, woo: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    response = client.post(
        webhook_path(woo),
        content=b"webhook_id=12",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["delivery_id"] is None
    assert stored(session_factory) == []


def test_woocommerce_order_is_stored(
    client: TestClient, woo: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of(woo_order())
    headers = woo_headers(body, "order.created", delivery_id="d41d8cd98f00b204e9800998ecf8427e")
    assert client.post(webhook_path(woo), content=body, headers=headers).status_code == 200
    [delivery] = stored(session_factory)
    assert (delivery.topic, delivery.delivery_id) == (
        "order.created",
        "d41d8cd98f00b204e9800998ecf8427e",
    )


def test_malformed_json_is_400_and_nothing_is_stored(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    for body in (b'{"id": 1,', b"[1, 2]"):
        response = client.post(
            webhook_path(shopify), content=body, headers=shopify_headers(body, "orders/create")
        )
        problem(response, 400)
    assert stored(session_factory) == []


def test_unknown_topic_is_stored_for_the_worker_to_report(
    client: TestClient, shopify: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    body = body_of({"id": 1, "title": "a product"})
    response = client.post(
        webhook_path(shopify), content=body, headers=shopify_headers(body, "products/create")
    )
    assert response.status_code == 200
    assert [d.topic for d in stored(session_factory)] == ["products/create"]


def test_magento_rsa_signature_and_hmac_variant(
    client: TestClient,
    magento: dict[str, Any],
    magento_keys: MagentoKeys,
    session_factory: sessionmaker[Session],
) -> None:
    body = body_of(magento_order_event())
    response = client.post(webhook_path(magento), content=body, headers=magento_keys.headers(body))
    assert response.status_code == 200, response.text
    assert response.json()["op"] == "success"
    other = body_of(magento_order_event(increment_id="000000043", entity_id="1043"))
    hmac_signed = {"x-magento-hmac-sha256": hmac_sha256_base64(MAGENTO_SECRET, other)}
    assert client.post(webhook_path(magento), content=other, headers=hmac_signed).status_code == 200
    # Signed by another key pair.
    problem(
        client.post(webhook_path(magento), content=body, headers=MagentoKeys().headers(body)), 401
    )
    deliveries = stored(session_factory)
    assert [d.topic for d in deliveries] == ["observer.sales_order_place_after"] * 2
    # Magento sends no delivery id: the body's hash stands in for it.
    assert all(d.delivery_id.startswith("sha256:") for d in deliveries)


def test_a_deleted_source_refuses_deliveries(
    client: TestClient, admin: dict[str, str], shopify: dict[str, Any]
) -> None:
    assert client.delete(f"/v1/sources/{shopify['id']}", headers=admin).status_code == 200
    body = body_of(shopify_order())
    problem(
        client.post(
            webhook_path(shopify), content=body, headers=shopify_headers(body, "orders/create")
        ),
        404,
    )
