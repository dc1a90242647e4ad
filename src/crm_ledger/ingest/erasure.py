"""Erasure of what commerce ingest keeps about a customer (called by `journal.erasure`).

Exports: `erase_ingest_copies`.

Deletes the raw bodies of every delivery that concerned the customer (the metadata and the
body's SHA-256 stay) and the links from shop customer ids to them. A delivery still waiting to
be mapped is not linked to anyone yet; when the worker maps it and finds the customer erased, it
records nothing and deletes its body then.
"""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import IngestCustomerLink, IngestDelivery


def erase_ingest_copies(session: Session, customer_pk: int) -> None:
    """Delete the customer's raw deliveries and shop links (flushes; the caller commits)."""
    session.execute(
        update(IngestDelivery)
        .where(IngestDelivery.customer_pk == customer_pk, IngestDelivery.body.is_not(None))
        .values(body=None)
    )
    session.execute(delete(IngestCustomerLink).where(IngestCustomerLink.customer_pk == customer_pk))
