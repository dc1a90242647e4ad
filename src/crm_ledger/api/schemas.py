"""How journal objects become the API's public JSON shapes.

Exports: `customer_public`, `record_public`, `receipt_url`. The shapes themselves are in
`crm_ledger.schemas` (pydantic only, shared with the client library); request shapes live in
`crm_ledger.journal.schemas`: they are what the ledger commits to.
"""

from __future__ import annotations

from crm_ledger.db.models import Customer
from crm_ledger.journal.records import RecordView, kind_name
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.schemas import CustomerPublic, RecordPublic


def receipt_url(record_id: str) -> str:
    """Where a record's receipt is served."""
    return f"/v1/records/{record_id}/receipt"


def customer_public(customer: Customer) -> CustomerPublic:
    """The public form of a customer row."""
    return CustomerPublic(
        id=customer.id,
        name=customer.name,
        email=customer.email,
        phone=customer.phone,
        external_ref=customer.external_ref,
        tags=list(customer.tags or []),
        created_at=format_timestamp(customer.created_at),
        erased_at=format_timestamp(customer.erased_at) if customer.erased_at else None,
    )


def record_public(record: RecordView) -> RecordPublic:
    """The public form of a record."""
    return RecordPublic.model_construct(
        id=record.id,
        customer_id=record.customer_id,
        kind=kind_name(record.kind),
        content=record.body,
        document=record.document,
        recorded_at=record.recorded_at,
        commitment="0x" + record.commitment.hex(),
        status="anchored" if record.anchored else "pending",
        seq=record.seq,
        batch_id=record.batch_id,
        receipt_url=receipt_url(record.id),
    )
