"""Order deliveries mapped in bulk: a step's consecutive order states in a handful of statements.

Exports: `OrderBatch`.

Mapping deliveries one at a time costs about a dozen statements each (the order, the buyer's
link, then e-mail, then a new customer and its link, the record, the order again). The worker
hands each run of consecutive `OrderState` deliveries of a step to an `OrderBatch` instead,
which:

1. reads what the run needs in at most five queries (`load`): its orders, the buyers' links,
   the buyers by e-mail blind index, those customers, and the first record of each known
   order;
2. decides in memory, delivery by delivery and in delivery order, what `ingest.apply` decides
   for one (`add`; same rules, same helpers: a later delivery of the run sees the customers,
   links and order states the earlier ones made), new customers sealed and record documents
   and commitments computed there;
3. writes it all (`write`): one multi-row INSERT per table (customers, links, records, orders),
   the new rows' pks read back by public id in one query per table, the known orders' changes
   in one multi-row UPDATE.

The worker plans a run (1 and 2) in a read-only transaction, before it takes the write lock.
Under the lock, `still_current` reads the same rows again (orders locked `FOR UPDATE`,
customers `FOR KEY SHARE` in pk order, as `journal.records` does) and the plan is written only if
they are what it was made from: a buyer created, linked or erased meanwhile, or an order
changed by a backfill or the clawback, and the worker plans the run again under the lock.
It runs `write` inside a savepoint; if anything in it fails, it maps the run's deliveries one
by one instead, so one bad delivery cannot fail or roll back the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, object_mapper

from crm_ledger.db.models import (
    Customer,
    IngestCustomerLink,
    IngestOrder,
    IngestSource,
    Record,
    new_id,
    utcnow,
)
from crm_ledger.ingest.apply import (
    Applied,
    advance_order,
    is_stale,
    new_order,
    order_record_body,
    order_state_hash,
    requeue_waiting_refunds,
)
from crm_ledger.ingest.payloads import OrderState, ShopCustomer
from crm_ledger.journal.customers import add_customer
from crm_ledger.journal.privacy import PersonalFields, keyring_of
from crm_ledger.journal.records import document_content
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.ledger.canonical import commitment
from crm_ledger.ledger.leaf import RecordKind

_RECORDS = cast(Table, Record.__table__)
_CUSTOMERS = cast(Table, Customer.__table__)
# No RETURNING: SQLite would then insert one row per statement to keep the rows' order.
_INSERT_RECORDS = insert(_RECORDS)
_INSERT_CUSTOMERS = insert(_CUSTOMERS)
_ORDERS = cast(Table, IngestOrder.__table__)
_INSERT_ORDERS = insert(_ORDERS)
# What an order's later state changes (and `_Draft` holds), bound as `_<column>`.
_ORDER_STATE = (
    "last_record_pk",
    "status",
    "currency",
    "total",
    "refunded",
    "refund_ids",
    "platform_updated_at",
    "state_sha256",
    "clawback_pending",
    "updated_at",
)
_UPDATE_ORDERS = (
    update(_ORDERS)
    .where(_ORDERS.c.pk == bindparam("_pk"))
    .values({name: bindparam(f"_{name}") for name in _ORDER_STATE})
)
# What a plan depends on of a known order: read when planning, and again under the lock.
_ORDER_COLUMNS = (
    IngestOrder.pk,
    IngestOrder.source_pk,
    IngestOrder.external_id,
    IngestOrder.customer_pk,
    IngestOrder.first_record_pk,
    IngestOrder.status,
    IngestOrder.currency,
    IngestOrder.total,
    IngestOrder.refunded,
    IngestOrder.refund_ids,
    IngestOrder.platform_updated_at,
    IngestOrder.state_sha256,
    IngestOrder.clawback_pending,
)
_INSERT_LINKS = insert(cast(Table, IngestCustomerLink.__table__))
# What a plan reads, when planning (no locks) and again under the write lock.
_ORDERS_OF = (
    select(*_ORDER_COLUMNS)
    .where(
        IngestOrder.source_pk == bindparam("source_pk"),
        IngestOrder.external_id.in_(bindparam("ids", expanding=True)),
    )
    .order_by(IngestOrder.pk)
)
_ORDERS_OF_LOCKED = _ORDERS_OF.with_for_update()
_LINKS_OF = (
    select(IngestCustomerLink.external_id, IngestCustomerLink.customer_pk)
    .where(
        IngestCustomerLink.source_pk == bindparam("source_pk"),
        IngestCustomerLink.external_id.in_(bindparam("ids", expanding=True)),
    )
    .order_by(IngestCustomerLink.external_id)
)
_CUSTOMERS_OF = (
    select(Customer.pk, Customer.id, Customer.key, Customer.email_index)
    .where(
        or_(
            Customer.pk.in_(bindparam("pks", expanding=True)),
            Customer.email_index.in_(bindparam("emails", expanding=True)),
        )
    )
    .order_by(Customer.pk)
)
_CUSTOMERS_OF_LOCKED = _CUSTOMERS_OF.with_for_update(read=True, key_share=True)

_ERASED = "the customer's personal data was erased: nothing more is recorded for them"
_SAME_STATE = "same order state already recorded"


@dataclass(eq=False)
class _Buyer:
    """A ledger customer as the batch sees it; `pk` is None until a new one is inserted."""

    id: str
    key: bytes | None
    pk: int | None = None
    # A new customer's row, for the INSERT (its pk left to the database).
    new_row: dict[str, object] | None = None


@dataclass(eq=False)
class _Draft:
    """An order's state as the batch has applied it so far (an `OrderBook`)."""

    buyer: _Buyer
    first_record_id: str
    status: str
    currency: str
    total: str
    refunded: str
    refund_ids: list[str]
    platform_updated_at: datetime | None
    state_sha256: bytes
    clawback_pending: bool
    stored_pk: int | None = None
    # Index into the batch's records of the order's first (new orders) and latest record.
    first_index: int | None = None
    last_index: int | None = None
    # A new order's row (its record and customer pks filled in by `write`).
    created_row: dict[str, object] | None = None


@dataclass(eq=False)
class _Outcome:
    buyer: _Buyer | None
    record_ids: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class _NewRecord:
    buyer: _Buyer
    id: str
    content: bytes
    commitment: bytes


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The rows a plan was made from: the run's orders, links and customers."""

    orders: list[tuple[Any, ...]]
    links: list[tuple[int, str, int]]
    customers: list[tuple[int, str, bytes | None, bytes | None]]


class OrderBatch:
    """Order states of one step, mapped together (see the module docstring).

    `load` the run's (source, event) pairs, `add` each in delivery order, then `write`; a plan
    made in another transaction is written only if `still_current` in the writing one.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._keyring = keyring_of(session)
        self._now = utcnow()
        self._recorded_at = format_timestamp(self._now)
        # The run's (source pk, event) pairs, for reading its rows again under the lock.
        self._events: list[tuple[int, OrderState]] = []
        self._emails: dict[bytes, None] = {}
        self._snapshot = _Snapshot([], [], [])
        self._orders: dict[tuple[int, str], _Draft] = {}
        self._links: dict[tuple[int, str], _Buyer] = {}
        self._by_email: dict[bytes, _Buyer] = {}
        self._new_links: list[tuple[int, str, _Buyer]] = []
        self._new_buyers: list[_Buyer] = []
        self._records: list[_NewRecord] = []
        self._outcomes: list[_Outcome] = []
        self._sources_with_new_orders: set[int] = set()

    def load(self, events: list[tuple[IngestSource, OrderState]], *, lock: bool) -> None:
        """Read the orders, links and customers `events` refer to (`lock`: as `write` needs
        them locked, when planning in the writing transaction)."""
        self._events = [(source.pk, event) for source, event in events]
        self._emails = {
            index: None
            for _, event in events
            if event.customer.email
            for index in self._keyring.email_indexes(event.customer.email)
        }
        self._snapshot = snapshot = self._read(self._session, lock=lock)
        buyers: dict[int, _Buyer] = {}
        for pk, customer_id, key, email_index in snapshot.customers:
            buyer = buyers.setdefault(pk, _Buyer(id=customer_id, key=key, pk=pk))
            if email_index in self._emails:
                # Rows come in pk order: the oldest customer with this e-mail wins.
                self._by_email.setdefault(email_index, buyer)
        for source_pk, external_id, customer_pk in snapshot.links:
            self._links[(source_pk, external_id)] = buyers[customer_pk]
        orders = [_StoredOrder(*row) for row in snapshot.orders]
        first_ids = self._first_record_ids([order.first_record_pk for order in orders])
        for order in orders:
            self._orders[(order.source_pk, order.external_id)] = _Draft(
                buyer=buyers[order.customer_pk],
                first_record_id=first_ids[order.first_record_pk],
                status=order.status,
                currency=order.currency,
                total=order.total,
                refunded=order.refunded,
                refund_ids=list(order.refund_ids or []),
                platform_updated_at=order.platform_updated_at,
                state_sha256=order.state_sha256,
                clawback_pending=order.clawback_pending,
                stored_pk=order.pk,
            )

    def still_current(self, session: Session) -> bool:
        """Whether the rows this plan was made from are unchanged in `session`'s transaction
        (read again, locked as `write` needs them)."""
        return self._read(session, lock=True) == self._snapshot

    def add(
        self,
        source: IngestSource,
        topic: str,
        event: OrderState,
        *,
        state_hash: bytes | None = None,
    ) -> None:
        """Apply one order state in memory, as `ingest.apply` would after the ones before
        (`state_hash`: its `order_state_hash`, when the caller has it already)."""
        draft = self._orders.get((source.pk, event.order_id))
        if state_hash is None:
            state_hash = order_state_hash(event)
        if draft is not None and draft.state_sha256 == state_hash:
            self._outcomes.append(_Outcome(draft.buyer, note=_SAME_STATE))
            return
        buyer = draft.buyer if draft is not None else self._resolve(source.pk, event.customer)
        if buyer.key is None:
            self._outcomes.append(_Outcome(buyer, note=_ERASED))
            return
        stale = draft is not None and is_stale(draft.platform_updated_at, event)
        status = draft.status if draft is not None and stale else event.status
        first_record_id = draft.first_record_id if draft is not None else None
        body = order_record_body(
            source, topic, event, status=status, stale=stale, first_record_id=first_record_id
        )
        record_id = self._add_record(buyer, body)
        index = len(self._records) - 1
        if draft is None:
            self._add_order(source.pk, event, buyer, state_hash, record_id, index)
        else:
            draft.last_index = index
            advance_order(draft, event, stale=stale, status=status, state_hash=state_hash)
        self._outcomes.append(_Outcome(buyer, record_ids=[record_id]))

    def write(self, session: Session) -> list[Applied]:
        """Insert and update what `add` decided, in `session`'s transaction; one `Applied` per
        `add`, in order."""
        connection = session.connection()
        if self._new_buyers:
            made = [buyer.new_row for buyer in self._new_buyers if buyer.new_row is not None]
            connection.execute(_INSERT_CUSTOMERS, made)
            customer_pks = _pks_by_id(
                connection, _CUSTOMERS, [buyer.id for buyer in self._new_buyers]
            )
            for buyer in self._new_buyers:
                buyer.pk = customer_pks[buyer.id]
        if self._new_links:
            connection.execute(_INSERT_LINKS, [self._link_row(*link) for link in self._new_links])
        record_pks: list[int] = []
        if self._records:
            connection.execute(_INSERT_RECORDS, [self._record_row(r) for r in self._records])
            pk_of = _pks_by_id(connection, _RECORDS, [record.id for record in self._records])
            record_pks = [pk_of[record.id] for record in self._records]
        self._write_orders(connection, record_pks)
        for source_pk in sorted(self._sources_with_new_orders):
            requeue_waiting_refunds(session, source_pk)
        return [
            Applied(
                record_ids=outcome.record_ids,
                customer_pk=outcome.buyer.pk if outcome.buyer is not None else None,
                note=outcome.note,
            )
            for outcome in self._outcomes
        ]

    def _resolve(self, source_pk: int, shop_customer: ShopCustomer) -> _Buyer:
        """`ingest.apply.resolve_customer` over what the batch loaded and made."""
        external_id = shop_customer.external_id
        if external_id is not None and (source_pk, external_id) in self._links:
            return self._links[(source_pk, external_id)]
        buyer = None
        if shop_customer.email:
            matches = [
                self._by_email[index]
                for index in self._keyring.email_indexes(shop_customer.email)
                if index in self._by_email
            ]
            # The oldest: stored customers by pk, then the ones this batch made.
            stored = [match for match in matches if match.pk is not None]
            if stored:
                buyer = min(stored, key=lambda match: cast(int, match.pk))
            elif matches:
                buyer = matches[0]
        if buyer is None:
            buyer = self._new_buyer(shop_customer)
        if external_id is not None:
            self._links[(source_pk, external_id)] = buyer
            self._new_links.append((source_pk, external_id, buyer))
        return buyer

    def _new_buyer(self, shop_customer: ShopCustomer) -> _Buyer:
        customer = add_customer(
            session=self._session,
            fields=PersonalFields(
                name=shop_customer.name, email=shop_customer.email, phone=shop_customer.phone
            ),
        )
        # Inserted by `write` with the batch's other new customers in one statement.
        self._session.expunge(customer)
        buyer = _Buyer(id=customer.id, key=customer.key, new_row=_row_of(customer))
        self._new_buyers.append(buyer)
        if customer.email_index is not None:
            self._by_email.setdefault(customer.email_index, buyer)
        return buyer

    def _add_record(self, buyer: _Buyer, body: dict[str, object]) -> str:
        assert buyer.key is not None
        record_id = new_id()
        content = document_content(
            record_id=record_id,
            customer_id=buyer.id,
            kind=RecordKind.ORDER,
            recorded_at=self._recorded_at,
            body=body,
        )
        self._records.append(_NewRecord(buyer, record_id, content, commitment(buyer.key, content)))
        return record_id

    def _add_order(
        self,
        source_pk: int,
        event: OrderState,
        buyer: _Buyer,
        state_hash: bytes,
        record_id: str,
        index: int,
    ) -> None:
        # The stored form is built now (its refund and clawback rules applied once, by
        # `new_order`); its customer and record pks are filled in by `write`.
        created = new_order(
            source_pk=source_pk,
            event=event,
            customer_pk=0,
            record_pk=0,
            state_hash=state_hash,
            now=self._now,
        )
        self._orders[(source_pk, event.order_id)] = _Draft(
            buyer=buyer,
            first_record_id=record_id,
            status=created.status,
            currency=created.currency,
            total=created.total,
            refunded=created.refunded,
            refund_ids=list(created.refund_ids),
            platform_updated_at=created.platform_updated_at,
            state_sha256=created.state_sha256,
            clawback_pending=created.clawback_pending,
            first_index=index,
            last_index=index,
            created_row=_row_of(created),
        )
        self._sources_with_new_orders.add(source_pk)

    def _write_orders(self, connection: Connection, record_pks: list[int]) -> None:
        created: list[dict[str, object]] = []
        changed: list[dict[str, object]] = []
        for draft in self._orders.values():
            if draft.last_index is None:
                continue  # loaded, not changed
            state: dict[str, object] = {
                "last_record_pk": record_pks[draft.last_index],
                "status": draft.status,
                "currency": draft.currency,
                "total": draft.total,
                "refunded": draft.refunded,
                "refund_ids": draft.refund_ids,
                "platform_updated_at": draft.platform_updated_at,
                "state_sha256": draft.state_sha256,
                "clawback_pending": draft.clawback_pending,
                "updated_at": self._now,
            }
            if draft.created_row is None:
                changed.append({"_pk": draft.stored_pk} | {f"_{k}": v for k, v in state.items()})
                continue
            assert draft.first_index is not None and draft.buyer.pk is not None
            row = draft.created_row | state
            row["customer_pk"] = draft.buyer.pk
            row["first_record_pk"] = record_pks[draft.first_index]
            created.append(row)
        if created:
            connection.execute(_INSERT_ORDERS, created)
        if changed:
            connection.execute(_UPDATE_ORDERS, changed)

    def _link_row(self, source_pk: int, external_id: str, buyer: _Buyer) -> dict[str, object]:
        return {
            "source_pk": source_pk,
            "external_id": external_id,
            "customer_pk": buyer.pk,
            "created_at": self._now,
        }

    def _record_row(self, record: _NewRecord) -> dict[str, object]:
        return {
            "id": record.id,
            "customer_pk": record.buyer.pk,
            "kind": int(RecordKind.ORDER),
            "content": record.content,
            "commitment": record.commitment,
            "created_at": self._now,
        }

    def _read(self, session: Session, *, lock: bool) -> _Snapshot:
        """The rows the run depends on; `lock`: orders `FOR UPDATE`, customers `FOR KEY SHARE`."""
        orders = self._read_orders(session, lock=lock)
        links = self._read_links(session)
        customer_pks = {row[3] for row in orders} | {customer_pk for _, _, customer_pk in links}
        return _Snapshot(orders, links, self._read_customers(session, customer_pks, lock=lock))

    def _read_orders(self, session: Session, *, lock: bool) -> list[tuple[Any, ...]]:
        wanted = _by_source((source_pk, event.order_id) for source_pk, event in self._events)
        query = _ORDERS_OF_LOCKED if lock else _ORDERS_OF
        rows = [
            tuple(row)
            for source_pk, ids in wanted.items()
            for row in session.execute(query, {"source_pk": source_pk, "ids": ids})
        ]
        return sorted(rows, key=lambda row: cast(int, row[0]))

    def _read_links(self, session: Session) -> list[tuple[int, str, int]]:
        wanted = _by_source(
            (source_pk, external_id)
            for source_pk, event in self._events
            if (external_id := event.customer.external_id) is not None
        )
        return [
            (source_pk, row.external_id, row.customer_pk)
            for source_pk, ids in wanted.items()
            for row in session.execute(_LINKS_OF, {"source_pk": source_pk, "ids": ids})
        ]

    def _read_customers(
        self, session: Session, pks: set[int], *, lock: bool
    ) -> list[tuple[int, str, bytes | None, bytes | None]]:
        if not pks and not self._emails:
            return []
        rows = session.execute(
            _CUSTOMERS_OF_LOCKED if lock else _CUSTOMERS_OF,
            {"pks": sorted(pks), "emails": list(self._emails)},
        )
        return [(row.pk, row.id, row.key, row.email_index) for row in rows]

    def _first_record_ids(self, record_pks: list[int]) -> dict[int, str]:
        if not record_pks:
            return {}
        rows = self._session.execute(
            select(Record.pk, Record.id).where(Record.pk.in_(sorted(set(record_pks))))
        )
        return {row.pk: row.id for row in rows}


@dataclass(frozen=True, slots=True)
class _StoredOrder:
    """A row of `_ORDER_COLUMNS`."""

    pk: int
    source_pk: int
    external_id: str
    customer_pk: int
    first_record_pk: int
    status: str
    currency: str
    total: str
    refunded: str
    refund_ids: list[str] | None
    platform_updated_at: datetime | None
    state_sha256: bytes
    clawback_pending: bool


def _row_of(obj: Customer | IngestOrder) -> dict[str, object]:
    """The column values of a new ORM object, for a Core INSERT (its pk left to the database)."""
    return {
        attr.key: getattr(obj, attr.key)
        for attr in object_mapper(obj).column_attrs
        if attr.key != "pk"
    }


def _pks_by_id(connection: Connection, table: Table, ids: list[str]) -> dict[str, int]:
    """The pks of the rows of `table` with these public ids."""
    rows = connection.execute(select(table.c.id, table.c.pk).where(table.c.id.in_(ids)))
    return {row.id: row.pk for row in rows}


def _by_source(pairs: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    """External ids grouped by source pk, each once, in first-seen order."""
    grouped: dict[int, dict[str, None]] = {}
    for source_pk, external_id in pairs:
        grouped.setdefault(source_pk, {})[external_id] = None
    return {source_pk: list(ids) for source_pk, ids in grouped.items()}
