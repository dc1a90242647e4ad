"""Events into the journal: the buyer matched or created, the order's records written.

Exports: `Applied`, `OrderBook`, `apply_event`, `resolve_customer`, `order_key`,
`order_state_hash`, `is_stale`, `order_record_body`, `new_order`, `advance_order`,
`count_refunds`, `requeue_waiting_refunds`, `CLAWBACK_STATUSES`, `REFUND_TOPICS`
(`ingest.batch` maps many order states with the same rules).

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
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Customer,
    IngestCustomerLink,
    IngestDelivery,
    IngestOrder,
    IngestSource,
    Record,
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
from crm_ledger.journal.customers import (
    add_customer,
    find_customer_by_email,
    update_personal_fields,
)
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.privacy import PersonalFields
from crm_ledger.journal.records import record_document
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.ledger.canonical import canonical_json
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


class OrderBook(Protocol):
    """An order's applied state: the stored `IngestOrder`, or `ingest.batch`'s draft of one."""

    status: str
    currency: str
    total: str
    refunded: str
    refund_ids: list[str]
    platform_updated_at: datetime | None
    state_sha256: bytes
    clawback_pending: bool


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
        customer = add_customer(
            session=session,
            fields=PersonalFields(name=buyer.name, email=buyer.email, phone=buyer.phone),
        )
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
        # `ingest.batch` updates orders with Core statements in the same transaction.
        .execution_options(populate_existing=True)
    ).first()


def order_state_hash(event: OrderState) -> bytes:
    """SHA-256 of what an order state says: the same state delivered again records nothing."""
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
    state_hash = order_state_hash(event)
    if order is not None and order.state_sha256 == state_hash:
        return Applied(customer_pk=order.customer_pk, note="same order state already recorded")
    if order is None:
        customer = resolve_customer(session, source, event.customer)
        assert customer is not None
    else:
        customer = session.get_one(Customer, order.customer_pk)
    if customer.key is None:
        return _erased(customer)
    stale = order is not None and is_stale(order.platform_updated_at, event)
    status = order.status if order is not None and stale else event.status
    first_record_id = None
    if order is not None:
        first_record_id = session.scalar(
            select(Record.id).where(Record.pk == order.first_record_pk)
        )
    body = order_record_body(
        source, topic, event, status=status, stale=stale, first_record_id=first_record_id
    )
    record_id, record_pk = _write(session, customer, body)
    now = utcnow()
    if order is None:
        order = new_order(
            source_pk=source.pk,
            event=event,
            customer_pk=customer.pk,
            record_pk=record_pk,
            state_hash=state_hash,
            now=now,
        )
        session.add(order)
        requeue_waiting_refunds(session, source.pk)
    else:
        order.last_record_pk = record_pk
        advance_order(order, event, stale=stale, status=status, state_hash=state_hash)
        order.updated_at = now
    session.flush()
    return Applied(record_ids=[record_id], customer_pk=customer.pk)


def is_stale(applied_updated_at: datetime | None, event: OrderState) -> bool:
    """Whether `event` describes the order as it was before the state already applied."""
    return (
        event.updated_at is not None
        and applied_updated_at is not None
        and event.updated_at < applied_updated_at
    )


def order_record_body(
    source: IngestSource,
    topic: str,
    event: OrderState,
    *,
    status: str,
    stale: bool,
    first_record_id: str | None,
) -> dict[str, Any]:
    """The body of the record an order state writes (see the module docstring)."""
    return _base_body(source, topic, event.order_id) | {
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


def new_order(
    *,
    source_pk: int,
    event: OrderState,
    customer_pk: int,
    record_pk: int,
    state_hash: bytes,
    now: datetime,
) -> IngestOrder:
    """The `IngestOrder` an order's first state creates (not added to a session)."""
    order = IngestOrder(
        source_pk=source_pk,
        external_id=event.order_id,
        order_number=event.order_number[:64],
        customer_pk=customer_pk,
        first_record_pk=record_pk,
        last_record_pk=record_pk,
        status=event.status,
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
    count_refunds(order, event.refunds)
    if event.status in CLAWBACK_STATUSES:
        order.clawback_pending = True
    return order


def advance_order(
    order: OrderBook, event: OrderState, *, stale: bool, status: str, state_hash: bytes
) -> None:
    """Move a known order to `event`'s state, unless `stale`; mark it for the clawback when
    it is newly cancelled or refunded, or lists a refund not counted yet."""
    if stale:
        return
    previous_status = order.status
    order.status = status
    order.currency = event.currency
    order.total = event.total
    order.platform_updated_at = event.updated_at
    order.state_sha256 = state_hash
    count_refunds(order, event.refunds)
    if status in CLAWBACK_STATUSES and previous_status not in CLAWBACK_STATUSES:
        order.clawback_pending = True


def requeue_waiting_refunds(session: Session, source_pk: int) -> None:
    """A refund delivered before its order failed; a new order may be the one it waits for."""
    session.connection().execute(_REQUEUE_REFUNDS, {"_source_pk": source_pk})


_DELIVERIES = cast(Table, IngestDelivery.__table__)
_REQUEUE_REFUNDS = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.source_pk == bindparam("_source_pk"),
        _DELIVERIES.c.status == DeliveryStatus.FAILED.value,
        _DELIVERIES.c.topic.in_(REFUND_TOPICS),
        _DELIVERIES.c.body.is_not(None),
    )
    .values(status=DeliveryStatus.PENDING.value)
)


def count_refunds(order: OrderBook, refunds: tuple[tuple[str, str], ...]) -> None:
    """Add the refunds not counted yet to the order's refunded total (and mark it for the
    clawback)."""
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
    count_refunds(order, ((event.refund_id, event.amount),))
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
    update_personal_fields(
        session=session,
        customer=customer,
        name=buyer.name or None,
        email=buyer.email or None,
        phone=buyer.phone or None,
    )
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
