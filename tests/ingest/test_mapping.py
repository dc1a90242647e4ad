"""The ingest worker: deliveries become customers and linked order records (both databases)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, IngestCustomerLink, IngestDelivery, Record, utcnow
from crm_ledger.ingest import worker as worker_module
from crm_ledger.ingest.worker import IngestWorker
from crm_ledger.journal.customers import create_customer
from crm_ledger.journal.schemas import CustomerCreate
from tests.api.helpers import problem
from tests.apps import TestClient
from tests.ingest.conftest import webhook_path
from tests.ingest.helpers import (
    customers,
    deliveries,
    order_bodies,
    orders,
    personal,
    send_shopify,
    send_woo,
)
from tests.ingest.shops import (
    SHOPIFY_CUSTOMER_ID,
    SHOPIFY_ORDER_ID,
    MagentoKeys,
    body_of,
    magento_order_event,
    shopify_customer,
    shopify_order,
    shopify_redact,
    shopify_refund,
    woo_order,
)


def test_a_shopify_order_becomes_an_order_record_with_exact_ids_and_amounts(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    assert worker.run_once() == 1
    [body] = order_bodies(session_factory)
    assert body == {
        "platform": "shopify",
        "source_id": shopify["id"],
        "shop": "Lovelace Prints",
        "event": "orders/create",
        "order_id": str(SHOPIFY_ORDER_ID),
        "order_key": f"{shopify['id']}:{SHOPIFY_ORDER_ID}",
        "order_number": "#1001",
        "currency": "EUR",
        "total": "199.00",
        "status": "paid",
        "platform_status": "paid",
        "lines": [
            {
                "sku": "AEP-A2",
                "name": "Analytical Engine Poster",
                "quantity": "2",
                "unit_price": "99.50",
                "total": None,
            }
        ],
        "platform_created_at": "2026-11-25T15:00:00.000000Z",
        "platform_updated_at": "2026-11-25T15:00:05.000000Z",
        "applied": True,
        "first_record_id": None,
    }
    [customer] = customers(session_factory)
    shown = personal(session_factory, customer)
    assert (shown.name, shown.email) == ("Ada Lovelace", "Ada.Lovelace@Example.com")
    [delivery] = deliveries(session_factory)
    assert delivery.status == "mapped"
    assert delivery.body is None  # personal data: gone once mapped
    assert delivery.customer_pk == customer.pk
    assert len(delivery.record_ids) == 1
    with session_factory() as session:
        link = session.scalars(select(IngestCustomerLink)).one()
    assert (link.external_id, link.customer_pk) == (str(SHOPIFY_CUSTOMER_ID), customer.pk)


def test_the_buyer_is_matched_by_normalised_email_then_by_platform_id(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory.begin() as session:
        known = create_customer(
            session=session,
            payload=CustomerCreate(name="Ada King", email="ADA.Lovelace@example.com"),
        ).pk
    send_shopify(client, shopify, "orders/create", shopify_order())
    # A second order: the customer changed their e-mail in the shop; the platform id still links.
    moved = shopify_customer(email="countess@example.com")
    second = shopify_order(id=SHOPIFY_ORDER_ID + 1, name="#1002", customer=moved)
    send_shopify(client, shopify, "orders/create", second)
    worker.run_once()
    assert [c.pk for c in customers(session_factory)] == [known]
    assert {o.customer_pk for o in orders(session_factory)} == {known}


def test_updates_link_to_the_first_record_and_never_move_the_order_backwards(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    worker.run_once()
    # The same state again (another webhook id, e.g. orders/paid right after create): nothing.
    send_shopify(client, shopify, "orders/paid", shopify_order())
    worker.run_once()
    assert len(order_bodies(session_factory)) == 1
    shipped = shopify_order(fulfillment_status="fulfilled", updated_at="2026-11-25T11:00:00-05:00")
    send_shopify(client, shopify, "orders/updated", shipped)
    # Delivered late: an update from before the payment.
    late = shopify_order(financial_status="pending", updated_at="2026-11-25T09:59:00-05:00")
    send_shopify(client, shopify, "orders/updated", late)
    worker.run_once()
    _, update, stale = order_bodies(session_factory)
    with session_factory() as session:
        first_id = session.scalar(select(Record.id).where(Record.kind == 2).order_by(Record.pk))
    assert (update["status"], update["first_record_id"], update["applied"]) == (
        "shipped",
        first_id,
        True,
    )
    assert (stale["status"], stale["platform_status"], stale["applied"]) == (
        "shipped",
        "pending",
        False,
    )
    [order] = orders(session_factory)
    assert order.status == "shipped"
    assert [d.status for d in deliveries(session_factory)] == ["mapped"] * 4


def test_a_refund_before_its_order_fails_is_listed_and_maps_once_the_order_arrives(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "refunds/create", shopify_refund("99.50"))
    worker.run_once()
    listed = client.get(f"/v1/sources/{shopify['id']}/deliveries?status=failed", headers=admin)
    assert listed.status_code == 200
    [failed] = listed.json()["items"]
    assert "has not arrived yet" in failed["error"]
    assert failed["body_kept"] is True
    send_shopify(client, shopify, "orders/create", shopify_order())
    worker.run_once()  # maps the order, and queues the refund again
    worker.run_once()
    _, refund = order_bodies(session_factory)
    assert refund["status"] == "partially_refunded"
    assert refund["refund"] == {
        "id": "929361465000000001",
        "amount": "99.50",
        "refunded_total": "99.50",
    }
    # The same refund again under another webhook id records nothing more.
    send_shopify(client, shopify, "refunds/create", shopify_refund("99.50"))
    worker.run_once()
    assert len(order_bodies(session_factory)) == 2
    # Retrying a delivery that is not failed is a conflict, an unknown one not found.
    problem(
        client.post(f"/v1/sources/{shopify['id']}/deliveries/{failed['id']}/retry", headers=admin),
        409,
    )
    problem(
        client.post(
            f"/v1/sources/{shopify['id']}/deliveries/0b6a3c1e-4f4e-4d3c-9c1e-2f0a5b7c8d9e/retry",
            headers=admin,
        ),
        404,
    )


def test_unknown_topic_and_missing_currency_fail_with_their_reason_and_retry(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    worker: IngestWorker,
) -> None:
    send_shopify(client, shopify, "products/create", {"id": 1, "title": "poster"})
    send_shopify(client, shopify, "orders/create", shopify_order(currency=None))
    send_shopify(client, shopify, "orders/create", shopify_order(id=42, total_price=199.0))
    assert worker.run_once() == 3
    listed = client.get(f"/v1/sources/{shopify['id']}/deliveries?status=failed", headers=admin)
    items = sorted(listed.json()["items"], key=lambda item: item["error"])
    assert len(items) == 2
    assert "currency is missing" in items[0]["error"]
    assert "topic 'products/create' is not one crm-ledger maps" in items[1]["error"]
    path = f"/v1/sources/{shopify['id']}/deliveries/{items[1]['id']}/retry"
    retry = client.post(path, headers=admin | {"Idempotency-Key": "retry-1"})
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "pending"
    replay = client.post(path, headers=admin | {"Idempotency-Key": "retry-1"})
    assert replay.json() == retry.json()
    worker.run_once()
    listed = client.get(f"/v1/sources/{shopify['id']}/deliveries?status=failed", headers=admin)
    retried = next(i for i in listed.json()["items"] if i["id"] == items[1]["id"])
    assert retried["attempts"] == 2


def test_woocommerce_guest_order_keeps_cents_sent_as_numbers(
    client: TestClient,
    woo: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_woo(client, woo, "order.created", woo_order(customer_id=0))
    no_email = woo_order(id=728, number="728", customer_id=0)
    no_email["billing"] = {**no_email["billing"], "email": None}
    send_woo(client, woo, "order.created", no_email)
    worker.run_once()
    first, second = order_bodies(session_factory)
    assert first["lines"][0]["unit_price"] == "19.99"
    assert (first["total"], first["currency"], first["status"]) == ("59.97", "USD", "paid")
    people = customers(session_factory)
    assert [personal(session_factory, c).email for c in people] == ["grace@example.com", None]
    with session_factory() as session:
        assert session.scalars(select(IngestCustomerLink)).all() == []
    assert second["order_number"] == "728"


def test_woocommerce_refunds_and_deletion(
    client: TestClient,
    woo: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_woo(client, woo, "order.created", woo_order())
    refunded = woo_order(
        date_modified_gmt="2026-11-26T10:00:00",
        refunds=[{"id": 730, "reason": "", "total": "-19.99"}],
    )
    send_woo(client, woo, "order.updated", refunded)
    send_woo(client, woo, "order.deleted", {"id": 727})
    worker.run_once()
    [order] = orders(session_factory)
    assert (order.refunded, order.refund_ids, order.status) == ("19.99", ["730"], "cancelled")
    assert [b["status"] for b in order_bodies(session_factory)] == ["paid", "paid", "cancelled"]


def test_magento_order_maps_with_its_four_decimals(
    client: TestClient,
    magento: dict[str, Any],
    magento_keys: MagentoKeys,
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    body = body_of(magento_order_event())
    response = client.post(webhook_path(magento), content=body, headers=magento_keys.headers(body))
    assert response.status_code == 200
    worker.run_once()
    [record] = order_bodies(session_factory)
    assert (record["order_number"], record["total"], record["status"]) == (
        "000000042",
        "120.5000",
        "paid",
    )
    assert record["lines"][0]["quantity"] == "1.0000"


def test_shopify_customer_events_create_then_update_the_customer(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "customers/create", shopify_customer())
    send_shopify(client, shopify, "customers/update", shopify_customer(last_name="King"))
    worker.run_once()
    [customer] = customers(session_factory)
    assert personal(session_factory, customer).name == "Ada King"
    with session_factory() as session:
        kinds = session.scalars(select(Record.kind).where(Record.customer_pk == customer.pk)).all()
    assert kinds == [1, 1]


class Killed(BaseException):
    """The process dying mid-step (not an error any handler would catch)."""


def test_a_worker_killed_between_storing_and_mapping_maps_once_after_restart(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A customer event is mapped alone (orders go through `ingest.batch`: tests/ingest/
    # test_batch.py kills the worker there).
    send_shopify(client, shopify, "customers/create", shopify_customer())
    real_apply = worker_module.apply_event

    def apply_then_die(**kwargs: Any) -> Any:
        real_apply(**kwargs)  # records written, not committed
        raise Killed

    monkeypatch.setattr(worker_module, "apply_event", apply_then_die)
    with pytest.raises(Killed):
        worker.run_once()
    assert customers(session_factory) == []
    assert [d.status for d in deliveries(session_factory)] == ["pending"]
    monkeypatch.setattr(worker_module, "apply_event", real_apply)
    restarted = IngestWorker(settings=worker.settings, session_factory=session_factory)
    assert restarted.run_once() == 1
    assert restarted.run_once() == 0
    [customer] = customers(session_factory)
    with session_factory() as session:
        kinds = session.scalars(select(Record.kind).where(Record.customer_pk == customer.pk)).all()
    assert kinds == [1]


def test_customers_redact_erases_the_customer_and_every_raw_copy(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    worker.run_once()
    # An order that cannot be mapped: failed, its body (with the buyer) kept.
    unmappable = shopify_order(id=SHOPIFY_ORDER_ID + 9, currency=None)
    send_shopify(client, shopify, "orders/create", unmappable)
    worker.run_once()
    send_shopify(client, shopify, "customers/redact", shopify_redact())
    worker.run_once()
    [customer] = customers(session_factory)
    assert customer.erased_at is not None
    shown = personal(session_factory, customer)
    assert (shown.name, shown.email, customer.key) == (None, None, None)
    assert (customer.personal, customer.email_index) == (None, None)
    with session_factory() as session:
        contents = session.scalars(
            select(Record.content).where(Record.customer_pk == customer.pk, Record.kind != 3)
        ).all()
        assert contents == [None]
        assert session.scalars(select(IngestCustomerLink)).all() == []
    assert [d.body for d in deliveries(session_factory)] == [None, None, None]
    # A later order of the same shop customer: recorded for nobody, body deleted.
    send_shopify(client, shopify, "orders/updated", shopify_order(financial_status="refunded"))
    worker.run_once()
    last = deliveries(session_factory)[-1]
    assert (last.status, last.body) == ("mapped", None)
    assert "erased" in (last.error or "")


def test_erasure_through_the_api_deletes_pending_deliveries_about_the_customer(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    worker.run_once()
    [customer] = customers(session_factory)
    send_shopify(
        client, shopify, "orders/create", shopify_order(id=SHOPIFY_ORDER_ID + 5, name="#1006")
    )
    erased = client.delete(f"/v1/customers/{customer.id}/personal-data", headers=admin)
    assert erased.status_code == 200, erased.text
    pending = deliveries(session_factory)[-1]
    assert (pending.status, pending.body) == ("failed", None)
    # Nothing can bring the customer back from that delivery.
    worker.run_once()
    assert len(customers(session_factory)) == 1
    with session_factory() as session:
        assert session.scalar(select(Customer.personal)) is None


def test_raw_bodies_are_never_in_the_deliveries_listing(
    client: TestClient, admin: dict[str, str], shopify: dict[str, Any]
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    listed = client.get(f"/v1/sources/{shopify['id']}/deliveries", headers=admin).json()
    assert "Lovelace" not in json.dumps(listed)
    assert listed["items"][0]["status"] == "pending"


def test_the_360_view_shows_the_shop_ids_until_erasure(
    client: TestClient,
    admin: dict[str, str],
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    worker.run_once()
    [customer] = customers(session_factory)
    view = client.get(f"/v1/crm/customers/{customer.id}", headers=admin)
    assert view.status_code == 200, view.text
    assert view.json()["customer"]["external_ids"] == [
        {"source_id": shopify["id"], "platform": "shopify", "external_id": str(SHOPIFY_CUSTOMER_ID)}
    ]
    timeline = view.json()["timeline"]["items"]
    assert [item["kind"] for item in timeline] == ["order"]
    client.delete(f"/v1/customers/{customer.id}/personal-data", headers=admin)
    after = client.get(f"/v1/crm/customers/{customer.id}", headers=admin).json()
    assert after["customer"]["external_ids"] == []


def test_failed_bodies_are_deleted_after_the_retention(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order(currency=None))
    send_shopify(client, shopify, "products/create", {"id": 1})
    worker.run_once()
    with session_factory.begin() as session:
        session.execute(
            update(IngestDelivery)
            .where(IngestDelivery.topic == "orders/create")
            .values(received_at=utcnow() - timedelta(days=31))
        )
    IngestWorker(settings=worker.settings, session_factory=session_factory).run_once()
    old, recent = deliveries(session_factory)
    assert (old.status, old.body) == ("failed", None)
    assert old.body_sha256 and old.error
    assert (recent.status, recent.body is not None) == ("failed", True)


def test_a_redact_fails_the_later_deliveries_of_its_step_about_the_customer(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", shopify_order())
    worker.run_once()
    # The redact and a new order of the same buyer, mapped in one step.
    send_shopify(client, shopify, "customers/redact", shopify_redact())
    send_shopify(client, shopify, "orders/create", shopify_order(id=SHOPIFY_ORDER_ID + 1))
    assert worker.run_once() == 2
    [customer] = customers(session_factory)  # not made again from the later order
    assert customer.key is None
    redact, later = deliveries(session_factory)[1:]
    assert redact.status == "mapped"
    assert (later.status, later.body, later.record_ids) == ("failed", None, [])
    assert "erased before this delivery was mapped" in (later.error or "")
    assert len(orders(session_factory)) == 1
