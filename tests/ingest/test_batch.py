"""Runs of order deliveries mapped together (`ingest.batch`): what earlier deliveries of a run
made is seen by later ones, one bad delivery neither blocks nor rolls back the others, and a
worker killed while writing a run maps it once after restart (both databases)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import IngestCustomerLink, IngestDelivery, Record
from crm_ledger.ingest import apply as apply_module
from crm_ledger.ingest import batch as batch_module
from crm_ledger.ingest import worker as worker_module
from crm_ledger.ingest.worker import IngestWorker
from tests.apps import TestClient
from tests.ingest.helpers import customers, deliveries, order_bodies, orders, send_shopify
from tests.ingest.shops import SHOPIFY_ORDER_ID, shopify_customer, shopify_order


class Killed(BaseException):
    """The process dying mid-step (not an error any handler would catch)."""


def numbered(n: int, **overrides: Any) -> dict[str, Any]:
    """Shopify order n of the same buyer (Ada)."""
    return shopify_order(id=SHOPIFY_ORDER_ID + n, name=f"#{1001 + n}", **overrides)


def record_ids_in_journal_order(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(Record.id).where(Record.kind == 2).order_by(Record.pk)))


def test_a_run_sees_the_customers_links_and_orders_its_earlier_deliveries_made(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", numbered(0))
    send_shopify(client, shopify, "orders/create", numbered(1))
    shipped = numbered(0, fulfillment_status="fulfilled", updated_at="2026-11-25T11:00:00-05:00")
    send_shopify(client, shopify, "orders/updated", shipped)
    # The same buyer under another e-mail: the platform id made in this run still links.
    moved = numbered(2, customer=shopify_customer(email="countess@example.com"))
    send_shopify(client, shopify, "orders/create", moved)
    send_shopify(client, shopify, "orders/updated", shipped)  # same state again: nothing
    assert worker.run_once() == 5

    [ada] = customers(session_factory)
    with session_factory() as session:
        assert len(session.scalars(select(IngestCustomerLink)).all()) == 1
    bodies = order_bodies(session_factory)
    ids = record_ids_in_journal_order(session_factory)
    assert [(b["order_number"], b["status"]) for b in bodies] == [
        ("#1001", "paid"),
        ("#1002", "paid"),
        ("#1001", "shipped"),
        ("#1003", "paid"),
    ]
    assert [b["first_record_id"] for b in bodies] == [None, None, ids[0], None]
    first, second, third = orders(session_factory)
    assert (first.status, first.customer_pk) == ("shipped", ada.pk)
    with session_factory() as session:
        pks = list(session.scalars(select(Record.pk).where(Record.kind == 2).order_by(Record.pk)))
    assert (first.first_record_pk, first.last_record_pk) == (pks[0], pks[2])
    assert (second.first_record_pk, third.first_record_pk) == (pks[1], pks[3])
    stored = deliveries(session_factory)
    assert [d.status for d in stored] == ["mapped"] * 5
    assert [d.record_ids for d in stored] == [[ids[0]], [ids[1]], [ids[2]], [ids[3]], []]
    assert stored[-1].error == "same order state already recorded"
    assert {d.customer_pk for d in stored} == {ada.pk}


def test_one_delivery_that_cannot_be_parsed_leaves_the_rest_of_the_run_mapped(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
) -> None:
    send_shopify(client, shopify, "orders/create", numbered(0))
    send_shopify(client, shopify, "orders/create", numbered(1, currency=None))
    send_shopify(client, shopify, "orders/create", numbered(2))
    assert worker.run_once() == 3
    assert [d.status for d in deliveries(session_factory)] == ["mapped", "failed", "mapped"]
    assert [b["order_number"] for b in order_bodies(session_factory)] == ["#1001", "#1003"]


def test_a_delivery_that_breaks_the_run_fails_alone_and_the_others_are_mapped_in_order(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A payload this version cannot handle (a bug, say) for one order only, in both paths.
    real_body = apply_module.order_record_body
    bad_order = str(SHOPIFY_ORDER_ID + 2)

    def body_or_bug(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = real_body(*args, **kwargs)
        if body["order_id"] == bad_order:
            raise RuntimeError("unexpected payload shape")
        return body

    monkeypatch.setattr(apply_module, "order_record_body", body_or_bug)
    monkeypatch.setattr(batch_module, "order_record_body", body_or_bug)
    for n in range(5):
        send_shopify(client, shopify, "orders/create", numbered(n))
    assert worker.run_once() == 5

    stored = deliveries(session_factory)
    assert [d.status for d in stored] == ["mapped", "mapped", "failed", "mapped", "mapped"]
    assert "unexpected error while mapping (RuntimeError)" in (stored[2].error or "")
    assert stored[2].body is not None  # kept for a retry
    assert [b["order_number"] for b in order_bodies(session_factory)] == [
        "#1001",
        "#1002",
        "#1004",
        "#1005",
    ]
    ids = record_ids_in_journal_order(session_factory)
    assert [d.record_ids for d in stored] == [[ids[0]], [ids[1]], [], [ids[2]], [ids[3]]]
    # One customer, one link, four orders: the rolled-back run left nothing behind.
    assert len(customers(session_factory)) == 1
    assert len(orders(session_factory)) == 4
    assert "mapping each alone" in caplog.text
    # Fixed (the upgrade): the failed delivery maps on retry, after the others.
    monkeypatch.setattr(apply_module, "order_record_body", real_body)
    monkeypatch.setattr(batch_module, "order_record_body", real_body)
    with session_factory.begin() as session:
        retried = session.get_one(IngestDelivery, stored[2].pk)
        retried.status = "pending"
    assert worker.run_once() == 1
    assert order_bodies(session_factory)[-1]["order_number"] == "#1003"


def test_a_worker_killed_while_writing_a_run_maps_it_once_after_restart(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(3):
        send_shopify(client, shopify, "orders/create", numbered(n))
    real_write = batch_module.OrderBatch.write

    def write_then_die(self: batch_module.OrderBatch, session: Session) -> Any:
        real_write(self, session)  # customers, links, records and orders written, not committed
        raise Killed

    monkeypatch.setattr(batch_module.OrderBatch, "write", write_then_die)
    with pytest.raises(Killed):
        worker.run_once()
    assert order_bodies(session_factory) == []
    assert customers(session_factory) == []
    assert [d.status for d in deliveries(session_factory)] == ["pending"] * 3
    monkeypatch.setattr(batch_module.OrderBatch, "write", real_write)
    restarted = IngestWorker(settings=worker.settings, session_factory=session_factory)
    assert restarted.run_once() == 3
    assert restarted.run_once() == 0
    assert [b["order_number"] for b in order_bodies(session_factory)] == ["#1001", "#1002", "#1003"]
    assert len(customers(session_factory)) == 1
    assert json.dumps([d.body for d in deliveries(session_factory)]) == "[null, null, null]"


def count_adds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Order ids `OrderBatch.add` plans, in call order."""
    planned: list[str] = []
    real_add = batch_module.OrderBatch.add

    def add(self: batch_module.OrderBatch, *args: Any, **kwargs: Any) -> None:
        planned.append(args[2].order_id)
        real_add(self, *args, **kwargs)

    monkeypatch.setattr(batch_module.OrderBatch, "add", add)
    return planned


def test_a_run_planned_before_the_write_transaction_is_written_as_planned(
    client: TestClient,
    shopify: dict[str, Any],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for n in range(3):
        send_shopify(client, shopify, "orders/create", numbered(n))
    planned = count_adds(monkeypatch)
    assert worker.run_once() == 3
    # Planned once, in the read transaction: the rows were unchanged under the lock.
    assert planned == [str(SHOPIFY_ORDER_ID + n) for n in range(3)]
    assert "mapping each alone" not in caplog.text
    assert [b["order_number"] for b in order_bodies(session_factory)] == ["#1001", "#1002", "#1003"]
    assert len(customers(session_factory)) == 1


def test_a_buyer_created_between_planning_and_writing_is_the_one_the_order_goes_to(
    client: TestClient,
    shopify: dict[str, Any],
    admin: dict[str, str],
    worker: IngestWorker,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send_shopify(client, shopify, "orders/create", numbered(0))
    real_plan = worker_module._plan_pending
    made: list[str] = []

    def plan_then_someone_adds_ada(*args: Any, **kwargs: Any) -> Any:
        step = real_plan(*args, **kwargs)
        # The plan made a new customer for Ada; the support desk adds her meanwhile.
        answer = client.post(
            "/v1/customers",
            json={"name": "Ada", "email": "ADA.lovelace@example.com"},
            headers=admin,
        )
        assert answer.status_code == 201, answer.text
        made.append(answer.json()["id"])
        return step

    monkeypatch.setattr(worker_module, "_plan_pending", plan_then_someone_adds_ada)
    planned = count_adds(monkeypatch)
    assert worker.run_once() == 1
    # Planned again under the lock, where the e-mail matched the customer just added.
    assert planned == [str(SHOPIFY_ORDER_ID)] * 2
    [ada] = customers(session_factory)
    assert ada.id == made[0]
    [order] = orders(session_factory)
    assert order.customer_pk == ada.pk
    with session_factory() as session:
        [link] = session.scalars(select(IngestCustomerLink)).all()
    assert link.customer_pk == ada.pk
    assert deliveries(session_factory)[0].customer_pk == ada.pk
