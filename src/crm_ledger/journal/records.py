"""Records: interactions and orders committed to the journal, and read back.

Exports: `RecordView`, `Backlog`, `record_interaction`, `record_interactions`, `record_order`,
`record_each`, `record_document`, `record_accesses`, `document_content`, `get_record`,
`find_record`, `anchoring_backlog`, `kind_name`, `DOCUMENT_VERSION`.

Every record commits to exactly this document, serialised with RFC 8785:

    {"v": 1, "id": <record id>, "customer_id": <customer id>, "kind": "interaction" | "order",
     "recorded_at": <RFC 3339 UTC with microseconds and "Z">, "body": {...validated request...}}

(`customer_id` is not repeated inside `body`.) The bytes are stored in `Record.content` and
`Record.commitment = HMAC-SHA256(customer key, content)`. `seq` and the leaf fields stay NULL
until the anchorer cuts a batch.

Writers flush but do not commit: the caller owns the transaction. On PostgreSQL they read the
customer `FOR KEY SHARE` (in pk order), so an erasure that first locks the customer row waits
for records being written for that customer, then sees them; and a writer that started after the
erasure sees the key gone. (SQLite serialises writers anyway.)
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, cast

from pydantic import TypeAdapter
from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.orm import Session, raiseload

from crm_ledger.db import bulk
from crm_ledger.db.models import Batch, BatchStatus, Customer, Record, new_ids, utcnow
from crm_ledger.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from crm_ledger.journal.schemas import (
    InteractionCreate,
    OrderCreate,
    format_timestamp,
    is_public_id,
    shorten,
)
from crm_ledger.ledger.canonical import canonical_json, commitment
from crm_ledger.ledger.leaf import RecordKind

DOCUMENT_VERSION = 1

# The write path runs these Core statements on the session's connection: no ORM unit of work,
# no identity map, statements built once.
_RECORDS = cast(Table, Record.__table__)
_CUSTOMERS = cast(Table, Customer.__table__)
_INSERT_COLUMNS = ("id", "customer_pk", "kind", "content", "commitment", "created_at")
_INTERACTIONS = TypeAdapter(list[InteractionCreate])
_SELECT_CUSTOMERS = select(_CUSTOMERS.c.id, _CUSTOMERS.c.pk, _CUSTOMERS.c.key)
# FOR KEY SHARE (ignored by SQLite), in pk order: it keeps the erasure (FOR UPDATE) out until
# the write commits, and does not conflict with the anchorer's UPDATE of `last_leaf_hash`. FOR
# SHARE did, and a group commit locks its writes' customers in arrival order, not pk order: a
# group holding b and wanting a deadlocked with a cut holding a and wanting b
# (tests/journal/test_row_locks.py).
_LOCK_CUSTOMER = _SELECT_CUSTOMERS.where(_CUSTOMERS.c.id == bindparam("id")).with_for_update(
    read=True, key_share=True
)
_LOCK_CUSTOMERS = (
    _SELECT_CUSTOMERS.where(_CUSTOMERS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_CUSTOMERS.c.pk)
    .with_for_update(read=True, key_share=True)
)


class RecordView(NamedTuple):
    """A record as the API shows it: the committed body, where it stands in anchoring.

    A named tuple rather than a frozen dataclass: as immutable, and a batch write makes one
    per record (a frozen dataclass of ten fields took 6 us to make, this 1.5 us)."""

    id: str
    customer_id: str
    kind: RecordKind
    # The committed document's body; None once the customer's data was erased.
    body: dict[str, Any] | None
    # The committed document's canonical text; None once erased.
    document: str | None
    recorded_at: str
    commitment: bytes
    anchored: bool
    seq: int | None
    batch_id: int | None
    # The body's canonical JSON text, when the writer has it at hand (a write does; a read
    # leaves it None): answers embed it instead of serialising `body` again.
    body_json: str | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """Records not yet anchored on chain (unsequenced or in a batch not yet mined)."""

    pending: int
    oldest_created_at: datetime | None


class _Item(NamedTuple):
    """One record to write: its customer, kind and body, and the request field naming the
    customer (for errors)."""

    customer_id: str
    kind: RecordKind
    body: dict[str, Any]
    field: str


def kind_name(kind: int) -> str:
    """The name of a record kind in documents and JSON: "interaction", "order", "erasure",
    "access"."""
    return RecordKind(kind).name.lower()


def record_interaction(*, session: Session, payload: InteractionCreate) -> RecordView:
    """Write one interaction; raises `NotFound` (customer) or `Conflict` (customer erased)."""
    return _write(session, [_interaction_item(payload, "customer_id")])[0]


def record_interactions(
    *, session: Session, payloads: Sequence[InteractionCreate], max_items: int
) -> list[RecordView]:
    """Write several interactions, all or none, in request order.

    Raises `PayloadTooLarge` beyond `max_items`, `NotFound` / `Conflict` naming the first
    item whose customer is unknown / erased.
    """
    if len(payloads) > max_items:
        raise PayloadTooLarge(
            f"a batch holds at most {max_items} items, this one has {len(payloads)}; "
            "split it into several requests",
            max_items=max_items,
            items=len(payloads),
        )
    bodies = _interaction_bodies(payloads)
    return _write(
        session,
        [
            _Item(p.customer_id, RecordKind.INTERACTION, body, f"items[{i}].customer_id")
            for i, (p, body) in enumerate(zip(payloads, bodies, strict=True))
        ],
    )


def record_order(*, session: Session, payload: OrderCreate) -> RecordView:
    """Write one order after checking that `total` is the sum of its lines.

    Raises `Unprocessable` when the total is wrong, `NotFound` / `Conflict` for the customer.
    """
    return _write(session, [_order_item(payload)])[0]


def record_each(
    *, session: Session, payloads: Sequence[InteractionCreate | OrderCreate]
) -> list[RecordView]:
    """Write one record per payload, each as `record_interaction` / `record_order` writes it
    alone, all or none, in one statement: single writes the group committer combines.

    Raises what one of the payloads would raise alone (then nothing is written).
    """
    interactions = [p for p in payloads if isinstance(p, InteractionCreate)]
    bodies = iter(_interaction_bodies(interactions))
    return _write(
        session,
        [
            _Item(p.customer_id, RecordKind.INTERACTION, next(bodies), "customer_id")
            if isinstance(p, InteractionCreate)
            else _order_item(p)
            for p in payloads
        ],
    )


def record_document(
    *, session: Session, customer_id: str, kind: RecordKind, body: dict[str, Any]
) -> RecordView:
    """Write one record whose body the service built itself (commerce ingest's order records).

    The body must already be canonical-JSON safe (strings, small integers, no floats).
    Raises `NotFound` / `Conflict` for the customer, as the other writers do.
    """
    return _write(session, [_Item(customer_id, kind, body, "customer_id")])[0]


def record_accesses(*, session: Session, customer_ids: Sequence[str], body: dict[str, Any]) -> int:
    """One access record (kind `access`, the same `body`) per customer of `customer_ids` whose
    personal data is not erased; returns how many were written.

    An erased customer has no personal data left to read, so their reads leave no record.
    """
    wanted = sorted({customer_id.lower() for customer_id in customer_ids})
    if not wanted:
        return 0
    rows = session.connection().execute(_LOCK_CUSTOMERS, {"ids": wanted})
    readable = [row.id for row in rows if row.key is not None]
    if not readable:
        return 0
    _write(session, [_Item(cid, RecordKind.ACCESS, body, "customer_id") for cid in readable])
    return len(readable)


def get_record(*, session: Session, record_id: str) -> RecordView:
    """The record with public id `record_id`; raises `NotFound`."""
    if is_public_id(record_id):
        row = session.execute(
            select(Record, Customer.id, Batch.status)
            .join(Customer, Customer.pk == Record.customer_pk)
            .outerjoin(Batch, Batch.id == Record.batch_id)
            .where(Record.id == record_id.lower())
            .options(raiseload(Record.customer))
        ).first()
        if row is not None:
            record, customer_id, batch_status = row
            return _view(record, customer_id, batch_status)
    raise _no_record(record_id)


def find_record(*, session: Session, record_id: str) -> Record:
    """The `Record` row with public id `record_id` (its customer not loaded); raises `NotFound`."""
    record = None
    if is_public_id(record_id):
        record = session.scalars(
            select(Record).where(Record.id == record_id.lower()).options(raiseload(Record.customer))
        ).first()
    if record is None:
        raise _no_record(record_id)
    return record


def anchoring_backlog(*, session: Session) -> Backlog:
    """How many records are not anchored yet, and when the oldest of them was recorded."""
    unsequenced_count, unsequenced_oldest = session.execute(
        select(func.count(), func.min(Record.created_at)).where(Record.seq.is_(None))
    ).one()
    in_flight_count, in_flight_oldest = session.execute(
        select(func.count(), func.min(Record.created_at))
        .select_from(Record)
        .join(Batch, Batch.id == Record.batch_id)
        .where(Batch.status != BatchStatus.ANCHORED.value)
    ).one()
    oldest = [t for t in (unsequenced_oldest, in_flight_oldest) if t is not None]
    return Backlog(
        pending=int(unsequenced_count) + int(in_flight_count),
        oldest_created_at=min(oldest) if oldest else None,
    )


def document_content(
    *, record_id: str, customer_id: str, kind: RecordKind, recorded_at: str, body: dict[str, Any]
) -> bytes:
    """The canonical bytes a record commits to (the document in the module docstring); for
    writers that insert records in bulk themselves (`ingest.batch`)."""
    return canonical_json(
        {
            "v": DOCUMENT_VERSION,
            "id": record_id,
            "customer_id": customer_id,
            "kind": kind_name(kind),
            "recorded_at": recorded_at,
            "body": body,
        }
    )


def _no_record(record_id: str) -> NotFound:
    shown = shorten(record_id)
    return NotFound(f"no record with id {shown!r}", record_id=shown)


def _interaction_item(payload: InteractionCreate, field: str) -> _Item:
    body = payload.model_dump(mode="json", exclude={"customer_id"})
    return _Item(payload.customer_id, RecordKind.INTERACTION, body, field)


def _interaction_bodies(payloads: Sequence[InteractionCreate]) -> list[dict[str, Any]]:
    """Each payload's body (`model_dump` without `customer_id`), in one dump of the whole list:
    a model_dump per item cost twice as much."""
    bodies: list[dict[str, Any]] = _INTERACTIONS.dump_python(
        list(payloads), mode="json", exclude={"__all__": {"customer_id"}}
    )
    return bodies


def _order_item(payload: OrderCreate) -> _Item:
    _check_total(payload)
    body = payload.model_dump(mode="json", exclude={"customer_id"})
    return _Item(payload.customer_id, RecordKind.ORDER, body, "customer_id")


def _check_total(payload: OrderCreate) -> None:
    with decimal.localcontext() as context:
        # 18 + 8 digits of price times 10 digits of quantity, summed over 1,000 lines.
        context.prec = 60
        lines_total = sum(
            (Decimal(line.unit_price) * line.quantity for line in payload.lines), Decimal(0)
        )
    if Decimal(payload.total) != lines_total:
        message = (
            f"total is {payload.total} but the lines add up to {lines_total:f} "
            "(the sum of quantity * unit_price)"
        )
        raise Unprocessable(
            message, errors=[{"location": "body", "field": "total", "message": message}]
        )


def _write(session: Session, items: list[_Item]) -> list[RecordView]:
    """Insert one record per item, all with one timestamp, in one executemany (COPY on
    PostgreSQL): a batch of 1,000 costs one statement, not 1,000 parameter conversions."""
    customers = _recordable_customers(session, items)
    now = utcnow()
    recorded_at = format_timestamp(now)
    record_ids = new_ids(len(items))
    bodies, contents = _documents(items, record_ids, recorded_at)
    stored_at = bulk.processed_time(session, now)
    rows: list[tuple[Any, ...]] = []
    views: list[RecordView] = []
    for item, record_id, body, content in zip(items, record_ids, bodies, contents, strict=True):
        customer_pk, key = customers[item.customer_id]
        record_commitment = commitment(key, content)
        rows.append((record_id, customer_pk, int(item.kind), content, record_commitment, stored_at))
        views.append(
            RecordView(
                id=record_id,
                customer_id=item.customer_id,
                kind=item.kind,
                body=item.body,
                document=content.decode("utf-8"),
                recorded_at=recorded_at,
                commitment=record_commitment,
                anchored=False,
                seq=None,
                batch_id=None,
                body_json=body.decode("utf-8"),
            )
        )
    bulk.insert_rows(session, _RECORDS.name, _INSERT_COLUMNS, rows)
    return views


def _documents(
    items: list[_Item], record_ids: list[str], recorded_at: str
) -> tuple[list[bytes], list[bytes]]:
    """Each item's canonical body, and its `document_content` byte for byte, canonicalising
    only what varies.

    RFC 8785 orders the document's keys as body, customer_id, id, kind, recorded_at, v, so each
    document is its canonical body between fixed parts: the customer's and the kind's parts
    are made once per batch (by `canonical_json`), and a record id from `new_ids` (hex digits
    and dashes) needs no escaping.
    """
    customer_parts: dict[str, bytes] = {}
    tails: dict[RecordKind, bytes] = {}
    bodies = []
    documents = []
    for item, record_id in zip(items, record_ids, strict=True):
        customer_part = customer_parts.get(item.customer_id)
        if customer_part is None:
            customer_part = b',"customer_id":' + canonical_json(item.customer_id) + b',"id":"'
            customer_parts[item.customer_id] = customer_part
        tail = tails.get(item.kind)
        if tail is None:
            tail = (
                b'","kind":'
                + canonical_json(kind_name(item.kind))
                + b',"recorded_at":'
                + canonical_json(recorded_at)
                + b',"v":'
                + canonical_json(DOCUMENT_VERSION)
                + b"}"
            )
            tails[item.kind] = tail
        body = canonical_json(item.body)
        bodies.append(body)
        documents.append(b'{"body":' + body + customer_part + record_id.encode("ascii") + tail)
    return bodies, documents


def _recordable_customers(session: Session, items: list[_Item]) -> dict[str, tuple[int, bytes]]:
    """(pk, key) of each item's customer, locked FOR KEY SHARE; raises for unknown or erased
    ones."""
    wanted = list(dict.fromkeys(item.customer_id for item in items))
    connection = session.connection()
    if len(wanted) == 1:
        rows = connection.execute(_LOCK_CUSTOMER, {"id": wanted[0]})
    else:
        rows = connection.execute(_LOCK_CUSTOMERS, {"ids": wanted})
    found = {row.id: (row.pk, row.key) for row in rows}
    for item in items:
        if item.customer_id not in found:
            raise NotFound(
                f"no customer with id {item.customer_id!r} ({item.field})",
                customer_id=item.customer_id,
                field=item.field,
            )
        if found[item.customer_id][1] is None:
            raise Conflict(
                f"customer's personal data was erased: nothing more can be recorded for "
                f"customer {item.customer_id} ({item.field})",
                customer_id=item.customer_id,
                field=item.field,
            )
    return {cid: (pk, key) for cid, (pk, key) in found.items() if key is not None}


def _view(record: Record, customer_id: str, batch_status: str | None) -> RecordView:
    body: dict[str, Any] | None = None
    recorded_at = format_timestamp(record.created_at)
    if record.content is not None:
        document = json.loads(record.content)
        body = document["body"]
        recorded_at = document["recorded_at"]
    return RecordView(
        id=record.id,
        customer_id=customer_id,
        kind=RecordKind(record.kind),
        body=body,
        document=bytes(record.content).decode("utf-8") if record.content is not None else None,
        recorded_at=recorded_at,
        commitment=record.commitment,
        anchored=batch_status == BatchStatus.ANCHORED.value,
        seq=record.seq,
        batch_id=record.batch_id,
    )
