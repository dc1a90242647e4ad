"""Events into the journal: the buyer matched or created, the order's records written.

Exports: `Applied`, `apply_event`, `resolve_customer`, `order_key`, `CLAWBACK_STATUSES`,
`REFUND_TOPICS`.

A platform customer is the ledger customer linked to (source, platform customer id), else the
one with the same normalised e-mail (`journal.customers.find_customer_by_email`), else a new
one; a guest order without an e-mail gets a customer of its own. An order's first delivery
writes an `order` record; every later change (update, payment, cancellation, refund, deletion)
writes another record that names the first (`first_record_id`): the original is never
rewritten. A change whose `updated_at` is older than the state already applied is recorded
(`applied: false`) but leaves the order's status where it is, and the same state delivered
twice records nothing the second time. A refund or cancellation marks the order for the
loyalty clawback (`ingest.clawback`). A refund that arrives before its order fails, and is
queued again whenever a new order of its source arrives.

Order record body (canonical JSON, no binary numbers, ids as strings):

    {"platform", "source_id", "shop", "event", "order_id", "order_number", "order_key",
     "currency", "total", "status", "platform_status", "lines": [{"sku", "name", "quantity",
     "unit_price", "total"}], "platform_created_at", "platform_updated_at", "applied",
     "first_record_id", "refund": {"id", "amount", "refunded_total"} (refunds only)}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Customer,
    IngestCustomerLink,
    IngestDelivery,
    IngestOrder,
    IngestSource,
    Record,
    new_id,
    utcnow,
)
from crm_ledger.errors import MappingError
from crm_ledger.ingest.inbox import DeliveryStatus
from crm_ledger.ingest.payloads import (
    CustomerChange,
    Event,
    OrderDeleted,
    OrderState,
    Redact,
    Refund,
    ShopCustomer,
)
from crm_ledger.journal.customers import find_customer_by_email
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.records import record_document
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.ledger.canonical import canonical_json, new_customer_key
from crm_ledger.ledger.leaf import RecordKind

#: Order statuses after which the points an order earned are taken back.
CLAWBACK_STATUSES = frozenset({"cancelled", "refunded"})
#: Topics of refunds: they fail while their order has not arrived, and are queued again when a
#: new order of their source arrives.
REFUND_TOPICS = frozenset({"refunds/create", "observer.sales_order_creditmemo_save_after"})


@dataclass
class Applied:
    """What a delivery did: the records it wrote, the customer it concerned, a note."""

    record_ids: list[str] = field(default_factory=list)
    customer_pk: int | None = None
    note: str | None = None


def order_key(source_id: str, order_id: str) -> str:
    """The order's id across every shop: what loyalty earns once per."""
    return f"{source_id}:{order_id}"


def apply_event(*, session: Session, source: IngestSource, topic: str, event: Event) -> Applied:
    """Write what `event` says into the journal (flushes; the caller commits)."""
    if isinstance(event, OrderState):
        return _apply_order(session, source, topic, event)
    if isinstance(event, Refund):
        return _apply_refund(session, source, topic, event)
    if isinstance(event, OrderDeleted):
        return _apply_deletion(session, source, topic, event)
    if isinstance(event, CustomerChange):
        return _apply_customer(session, source, topic, event)
    return _apply_redact(session, source, event)


def resolve_customer(
    session: Session, source: IngestSource, buyer: ShopCustomer, *, create: bool = True
) -> Customer | None:
    """The ledger customer `buyer` is (see the module docstring); None when not found and not
    `create`."""
    if buyer.external_id is not None:
        linked = session.scalars(
            select(Customer)
            .join(IngestCustomerLink, IngestCustomerLink.customer_pk == Customer.pk)
            .where(
                IngestCustomerLink.source_pk == source.pk,
                IngestCustomerLink.external_id == buyer.external_id,
            )
        ).first()
        if linked is not None:
            return linked
    customer = find_customer_by_email(session, buyer.email) if buyer.email else None
    if customer is None:
        if not create:
            return None
        customer = Customer(
            id=new_id(),
            name=buyer.name,
            email=buyer.email,
            phone=buyer.phone,
            tags=[],
            key=new_customer_key(),
            created_at=utcnow(),
        )
        session.add(customer)
        session.flush()
    if buyer.external_id is not None:
        session.add(
            IngestCustomerLink(
                source_pk=source.pk,
                external_id=buyer.external_id,
                customer_pk=customer.pk,
                created_at=utcnow(),
            )
        )
    return customer


def _erased(customer: Customer) -> Applied:
    return Applied(
        customer_pk=customer.pk,
        note="the customer's personal data was erased: nothing more is recorded for them",
    )


def _lock_order(session: Session, source: IngestSource, order_id: str) -> IngestOrder | None:
    return session.scalars(
        select(IngestOrder)
        .where(IngestOrder.source_pk == source.pk, IngestOrder.external_id == order_id)
        .with_for_update()
    ).first()


def _state_hash(event: OrderState) -> bytes:
    state = {
        "order_number": event.order_number,
        "currency": event.currency,
        "total": event.total,
        "platform_status": event.platform_status,
        "status": event.status,
        "updated_at": format_timestamp(event.updated_at) if event.updated_at else None,
        "lines": [_line(line) for line in event.lines],
        "refunds": [list(refund) for refund in event.refunds],
    }
    return hashlib.sha256(canonical_json(state)).digest()


def _line(line: Any) -> dict[str, Any]:
    return {
        "sku": line.sku,
        "name": line.name,
        "quantity": line.quantity,
        "unit_price": line.unit_price,
        "total": line.total,
    }


def _base_body(source: IngestSource, topic: str, order_id: str) -> dict[str, Any]:
    return {
        "platform": source.platform,
        "source_id": source.id,
        "shop": source.name,
        "event": topic,
        "order_id": order_id,
        "order_key": order_key(source.id, order_id),
    }


def _write(session: Session, customer: Customer, body: dict[str, Any]) -> tuple[str, int]:
    view = record_document(
        session=session, customer_id=customer.id, kind=RecordKind.ORDER, body=body
    )
    pk = session.scalar(select(Record.pk).where(Record.id == view.id))
    assert pk is not None
    return view.id, pk


def _apply_order(session: Session, source: IngestSource, topic: str, event: OrderState) -> Applied:
    order = _lock_order(session, source, event.order_id)
    state_hash = _state_hash(event)
    if order is not None and order.state_sha256 == state_hash:
        return Applied(customer_pk=order.customer_pk, note="same order state already recorded")
    if order is None:
        customer = resolve_customer(session, source, event.customer)
        assert customer is not None
    else:
        customer = session.get_one(Customer, order.customer_pk)
    if customer.key is None:
        return _erased(customer)
    stale = (
        order is not None
        and event.updated_at is not None
        and order.platform_updated_at is not None
        and event.updated_at < order.platform_updated_at
    )
    status = order.status if order is not None and stale else event.status
    first_record_id = None
    if order is not None:
        first_record_id = session.scalar(
            select(Record.id).where(Record.pk == order.first_record_pk)
        )
    body = _base_body(source, topic, event.order_id) | {
        "order_number": event.order_number,
        "currency": event.currency,
        "total": event.total,
        "status": status,
        "platform_status": event.platform_status,
        "lines": [_line(line) for line in event.lines],
        "platform_created_at": _time(event.created_at),
        "platform_updated_at": _time(event.updated_at),
        "applied": not stale,
        "first_record_id": first_record_id,
    }
    record_id, record_pk = _write(session, customer, body)
    now = utcnow()
    if order is None:
        order = IngestOrder(
            source_pk=source.pk,
            external_id=event.order_id,
            order_number=event.order_number[:64],
            customer_pk=customer.pk,
            first_record_pk=record_pk,
            last_record_pk=record_pk,
            status=status,
            currency=event.currency,
            total=event.total,
            refunded="0",
            refund_ids=[],
            platform_updated_at=event.updated_at,
            state_sha256=state_hash,
            clawback_pending=False,
            clawed_points=0,
            created_at=now,
            updated_at=now,
        )
        session.add(order)
        previous_status = None
        _requeue_waiting_refunds(session, source)
    else:
        order.last_record_pk = record_pk
        previous_status = order.status
        if not stale:
            order.status = status
            order.currency = event.currency
            order.total = event.total
            order.platform_updated_at = event.updated_at
            order.state_sha256 = state_hash
        order.updated_at = now
    if not stale:
        _count_refunds(order, event.refunds)
        if status in CLAWBACK_STATUSES and previous_status not in CLAWBACK_STATUSES:
            order.clawback_pending = True
    session.flush()
    return Applied(record_ids=[record_id], customer_pk=customer.pk)


def _requeue_waiting_refunds(session: Session, source: IngestSource) -> None:
    """A refund delivered before its order failed; a new order may be the one it waits for."""
    session.execute(
        update(IngestDelivery)
        .where(
            IngestDelivery.source_pk == source.pk,
            IngestDelivery.status == DeliveryStatus.FAILED.value,
            IngestDelivery.topic.in_(REFUND_TOPICS),
            IngestDelivery.body.is_not(None),
        )
        .values(status=DeliveryStatus.PENDING.value)
    )


def _count_refunds(order: IngestOrder, refunds: tuple[tuple[str, str], ...]) -> None:
    known = list(order.refund_ids or [])
    refunded = Decimal(order.refunded)
    for refund_id, amount in refunds:
        if refund_id not in known:
            known.append(refund_id)
            refunded += Decimal(amount)
            order.clawback_pending = True
    order.refund_ids = known
    order.refunded = format(refunded, "f")


def _apply_refund(session: Session, source: IngestSource, topic: str, event: Refund) -> Applied:
    order = _lock_order(session, source, event.order_id)
    if order is None:
        raise MappingError(
            f"refund {event.refund_id} is for order {event.order_id}, which has not arrived "
            "yet; retry this delivery once the order is in the ledger"
        )
    customer = session.get_one(Customer, order.customer_pk)
    if customer.key is None:
        return _erased(customer)
    if event.refund_id in (order.refund_ids or []):
        return Applied(customer_pk=customer.pk, note=f"refund {event.refund_id} already recorded")
    _count_refunds(order, ((event.refund_id, event.amount),))
    full = Decimal(order.refunded) >= Decimal(order.total)
    if full:
        order.status = "refunded"
    first_record_id = session.scalar(select(Record.id).where(Record.pk == order.first_record_pk))
    body = _base_body(source, topic, event.order_id) | {
        "order_number": order.order_number,
        "currency": order.currency,
        "total": order.total,
        "status": "refunded" if full else "partially_refunded",
        "platform_status": "refund",
        "platform_created_at": _time(event.created_at),
        "applied": True,
        "first_record_id": first_record_id,
        "refund": {"id": event.refund_id, "amount": event.amount, "refunded_total": order.refunded},
    }
    record_id, record_pk = _write(session, customer, body)
    order.last_record_pk = record_pk
    order.updated_at = utcnow()
    session.flush()
    return Applied(record_ids=[record_id], customer_pk=customer.pk)


def _apply_deletion(
    session: Session, source: IngestSource, topic: str, event: OrderDeleted
) -> Applied:
    order = _lock_order(session, source, event.order_id)
    if order is None:
        return Applied(note=f"order {event.order_id} was never recorded: nothing to delete")
    customer = session.get_one(Customer, order.customer_pk)
    if customer.key is None:
        return _erased(customer)
    if order.status == "cancelled":
        return Applied(customer_pk=customer.pk, note="order already cancelled")
    first_record_id = session.scalar(select(Record.id).where(Record.pk == order.first_record_pk))
    body = _base_body(source, topic, event.order_id) | {
        "order_number": order.order_number,
        "currency": order.currency,
        "total": order.total,
        "status": "cancelled",
        "platform_status": "deleted",
        "applied": True,
        "first_record_id": first_record_id,
    }
    record_id, record_pk = _write(session, customer, body)
    if order.status not in CLAWBACK_STATUSES:
        order.clawback_pending = True
    order.status = "cancelled"
    order.last_record_pk = record_pk
    order.updated_at = utcnow()
    session.flush()
    return Applied(record_ids=[record_id], customer_pk=customer.pk)


def _apply_customer(
    session: Session, source: IngestSource, topic: str, event: CustomerChange
) -> Applied:
    customer = resolve_customer(session, source, event.customer)
    assert customer is not None
    if customer.key is None:
        return _erased(customer)
    buyer = event.customer
    customer.name = buyer.name or customer.name
    customer.email = buyer.email or customer.email
    customer.phone = buyer.phone or customer.phone
    session.flush()
    view = record_document(
        session=session,
        customer_id=customer.id,
        kind=RecordKind.INTERACTION,
        body={
            "type": "shop_customer_change",
            "channel": source.platform,
            "occurred_at": _time(event.updated_at) or format_timestamp(utcnow()),
            "details": {
                "source_id": source.id,
                "event": topic,
                "platform_customer_id": buyer.external_id,
            },
        },
    )
    return Applied(record_ids=[view.id], customer_pk=customer.pk)


def _apply_redact(session: Session, source: IngestSource, event: Redact) -> Applied:
    customer = resolve_customer(session, source, event.customer, create=False)
    if customer is None:
        return Applied(note="no such customer in the ledger: nothing to erase")
    result = erase_customer(session=session, customer_id=customer.id)
    return Applied(record_ids=[result.erasure_record_id], customer_pk=customer.pk)


def _time(value: Any) -> str | None:
    return format_timestamp(value) if value is not None else None
