"""Backfill: a JSON-Lines file of a platform's own order objects into the inbox, then mapped.

Exports: `ImportSummary`, `import_orders`, `IMPORT_TOPICS`.

Each line is one order as the platform's REST API returns it (Shopify `GET orders.json`'s
`orders[]`, WooCommerce `GET /wc/v3/orders`, Magento `GET /V1/orders`' `items[]`). A line is
stored as a delivery of the platform's order-update topic under the delivery id
`import:<order id>:<SHA-256 of the line>`, then mapped like a webhook. So importing a file twice
stores nothing the second time, and an order imported and later delivered by webhook in the same
state is one order with one record: the mapper records a state once (`ingest.apply`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import IngestDelivery
from crm_ledger.errors import MappingError
from crm_ledger.ingest.inbox import (
    DeliveryStatus,
    insert_deliveries,
    pending_row,
    stored_delivery_ids,
)
from crm_ledger.ingest.payloads import load_json, parse_order
from crm_ledger.ingest.signatures import Platform
from crm_ledger.ingest.sources import get_source
from crm_ledger.ingest.worker import map_pending

#: The topic an imported order is stored under, per platform.
IMPORT_TOPICS = {
    Platform.SHOPIFY: "orders/updated",
    Platform.WOOCOMMERCE: "order.updated",
    Platform.MAGENTO: "observer.sales_order_save_after",
}
_CHUNK = 500


@dataclass
class ImportSummary:
    """What an import did."""

    lines: int = 0
    stored: int = 0
    already_stored: int = 0
    # (line number, why) of lines that are not an order object.
    malformed: list[tuple[int, str]] = field(default_factory=list)
    mapped: int = 0
    failed: int = 0
    records: int = 0


def import_orders(
    *,
    session_factory: sessionmaker[Session],
    source_id: str,
    lines: Iterable[bytes],
    batch_size: int,
    on_line: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Store every order line of `lines` for source `source_id`, then map them all.

    Raises `NotFound` for an unknown or deleted source. `on_line(bytes_read)` follows progress.
    """
    with session_factory() as session:
        source = get_source(session=session, source_id=source_id, active=True)
        source_pk, platform = source.pk, Platform(source.platform)
    summary = ImportSummary()
    stored_ids: list[str] = []
    chunk: list[dict[str, object]] = []
    for number, line in enumerate(lines, start=1):
        if on_line is not None:
            on_line(len(line))
        if not line.strip():
            continue
        summary.lines += 1
        try:
            row = _delivery_row(platform, source_pk, line)
        except MappingError as exc:
            summary.malformed.append((number, str(exc)))
            continue
        chunk.append(row)
        if len(chunk) >= _CHUNK:
            stored_ids += _store(session_factory, chunk, summary)
            chunk = []
    if chunk:
        stored_ids += _store(session_factory, chunk, summary)
    _map_all(session_factory, source_pk, stored_ids, batch_size, summary)
    return summary


def _delivery_row(platform: Platform, source_pk: int, line: bytes) -> dict[str, object]:
    document = load_json(line)
    if not isinstance(document, dict):
        raise MappingError("not a JSON object")
    order = parse_order(platform, document)
    if platform is Platform.MAGENTO:
        # Stored as the webhook would carry it: the event and the order under `data`.
        body = json.dumps(
            {"eventName": IMPORT_TOPICS[platform], "data": {"order": json.loads(line)}},
            separators=(",", ":"),
        ).encode()
    else:
        body = line.strip()
    line_hash = hashlib.sha256(line.strip()).hexdigest()
    return pending_row(
        source_pk=source_pk,
        delivery_id=f"import:{order.order_id}:{line_hash}"[:200],
        topic=IMPORT_TOPICS[platform],
        body=body,
    )


def _store(
    session_factory: sessionmaker[Session], rows: list[dict[str, object]], summary: ImportSummary
) -> list[str]:
    """Insert the rows not stored yet; returns their delivery ids."""
    unique = {str(row["delivery_id"]): row for row in rows}
    with session_factory() as session, session.begin():
        source_pk = rows[0]["source_pk"]
        assert isinstance(source_pk, int)
        known = stored_delivery_ids(session, source_pk, list(unique))
        new = [row for key, row in unique.items() if key not in known]
        if new:
            insert_deliveries(session, new)
    summary.stored += len(new)
    summary.already_stored += len(rows) - len(new)
    return [str(row["delivery_id"]) for row in new]


def _map_all(
    session_factory: sessionmaker[Session],
    source_pk: int,
    delivery_ids: list[str],
    batch_size: int,
    summary: ImportSummary,
) -> None:
    while map_pending(session_factory, limit=batch_size):
        pass
    rows: list[tuple[str, list[str]]] = []
    with session_factory() as session:
        for start in range(0, len(delivery_ids), _CHUNK):
            rows += session.execute(
                select(IngestDelivery.status, IngestDelivery.record_ids).where(
                    IngestDelivery.source_pk == source_pk,
                    IngestDelivery.delivery_id.in_(delivery_ids[start : start + _CHUNK]),
                )
            ).tuples()
    summary.mapped = sum(1 for status, _ in rows if status == DeliveryStatus.MAPPED.value)
    summary.failed = sum(1 for status, _ in rows if status == DeliveryStatus.FAILED.value)
    summary.records = sum(len(ids or []) for _, ids in rows)
