"""Erasure (GDPR / RODO): delete a customer's personal data and keep every proof valid.

Exports: `ErasureResult`, `erase_customer`, `LOCK_TIMEOUT_MS`.

An erasure, in one transaction:

- clears the customer's personal fields (name, email, phone, external ref, tags) and deletes
  their key, so no commitment of theirs can be opened or confirmed by guessing any more;
- deletes the content of every record of theirs, pending ones included; each record keeps its
  commitment and, once sequenced, its leaf (seq, kind, previous leaf hash, leaf hash), so every
  leaf, batch root, head and receipt stays valid;
- deletes the copies commerce ingest holds: raw webhook bodies about the customer and the
  links from shop customer ids to them (`ingest.erasure`);
- writes an erasure record (kind `erasure`) for the customer, so the ledger shows when it
  happened. Its document is `{"v": 1, "id", "customer_id", "kind": "erasure", "recorded_at",
  "body": {"erased_records": N}}`: no personal data. It is committed with a fresh random key
  of its own (`Record.key`), not with the customer's (deleted) key nor any key an outsider could
  know, so its commitment cannot be tied to the customer by anyone outside the service. The
  anchorer chains it after the customer's last record, which seals their history: no record
  of theirs from before the erasure can later disappear unnoticed.

Erasing twice is harmless: the second call changes nothing and reports the first erasure. The
caller owns the transaction (writers flush, they do not commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import Customer, Record, new_id, utcnow
from crm_ledger.errors import NotFound
from crm_ledger.ingest.erasure import erase_ingest_copies
from crm_ledger.journal.records import DOCUMENT_VERSION, kind_name
from crm_ledger.journal.schemas import format_timestamp, is_public_id
from crm_ledger.ledger.canonical import canonical_json, commitment, new_customer_key
from crm_ledger.ledger.leaf import RecordKind

#: The longest an erasure waits for a row lock on PostgreSQL before giving up (to be retried).
LOCK_TIMEOUT_MS = 500


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """What an erasure did (or, when `already_erased`, what the earlier one did)."""

    customer_id: str
    erased_at: datetime
    erased_records: int
    erasure_record_id: str
    already_erased: bool


def erase_customer(*, session: Session, customer_id: str) -> ErasureResult:
    """Erase the personal data of customer `customer_id`; raises `NotFound`.

    On PostgreSQL the customer row is locked FOR UPDATE first: record writers hold it FOR
    SHARE, so the erasure waits for records being written for the customer and sees them, and
    writers that come after see the key gone and are refused.

    The anchorer locks records, then customers (to move their last leaf hash); the erasure
    locks the customer, then their records. Should the two ever wait on each other, the erasure
    must be the one to give up, not the anchorer: its lock waits are capped at
    `LOCK_TIMEOUT_MS`, well under PostgreSQL's deadlock check (1 s by default), and the caller
    retries on `LockNotAvailable` (SQLSTATE 55P03).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
    customer = None
    if is_public_id(customer_id):
        customer = session.execute(
            select(Customer.pk, Customer.id, Customer.erased_at)
            .where(Customer.id == customer_id.lower())
            .with_for_update()
        ).first()
    if customer is None:
        raise NotFound(f"no customer with id {customer_id!r}", customer_id=customer_id)
    if customer.erased_at is not None:
        return _earlier_erasure(session, customer.pk, customer.id, customer.erased_at)

    # Commerce ingest (issue 11): raw deliveries and shop customer links; it reads the e-mail
    # and shop ids to find unmapped deliveries, so before they are cleared.
    erase_ingest_copies(session, customer.pk)
    now = utcnow()
    session.execute(
        update(Customer)
        .where(Customer.pk == customer.pk)
        .values(
            name=None,
            email=None,
            phone=None,
            external_ref=None,
            tags=[],
            key=None,
            erased_at=now,
        )
    )
    erased = _erasable_records(session, customer.pk)
    session.execute(
        update(Record)
        .where(Record.customer_pk == customer.pk, Record.kind != int(RecordKind.ERASURE))
        .values(content=None)
    )
    record_id = new_id()
    content = canonical_json(
        {
            "v": DOCUMENT_VERSION,
            "id": record_id,
            "customer_id": customer.id,
            "kind": kind_name(RecordKind.ERASURE),
            "recorded_at": format_timestamp(now),
            "body": {"erased_records": erased},
        }
    )
    own_key = new_customer_key()
    session.execute(
        insert(Record).values(
            id=record_id,
            customer_pk=customer.pk,
            kind=int(RecordKind.ERASURE),
            content=content,
            commitment=commitment(own_key, content),
            key=own_key,
            created_at=now,
        )
    )
    return ErasureResult(
        customer_id=customer.id,
        erased_at=now,
        erased_records=erased,
        erasure_record_id=record_id,
        already_erased=False,
    )


def _earlier_erasure(
    session: Session, customer_pk: int, customer_id: str, erased_at: datetime
) -> ErasureResult:
    erasure_id = session.scalar(
        select(Record.id)
        .where(Record.customer_pk == customer_pk, Record.kind == int(RecordKind.ERASURE))
        .order_by(Record.pk)
        .limit(1)
    )
    return ErasureResult(
        customer_id=customer_id,
        erased_at=erased_at,
        erased_records=_erasable_records(session, customer_pk),
        erasure_record_id=erasure_id or "",
        already_erased=True,
    )


def _erasable_records(session: Session, customer_pk: int) -> int:
    """The customer's records other than erasure records."""
    count = session.scalar(
        select(func.count())
        .select_from(Record)
        .where(Record.customer_pk == customer_pk, Record.kind != int(RecordKind.ERASURE))
    )
    return int(count or 0)
