"""Erasure of what commerce ingest keeps about a customer (called by `journal.erasure`).

Exports: `erase_ingest_copies`, `ERASED_BEFORE_MAPPING`.

Deletes the raw bodies of every delivery mapped to the customer (the metadata and the body's
SHA-256 stay) and the links from shop customer ids to them. Deliveries not mapped to anyone
(pending, or failed before the buyer was known) are searched for the customer: one whose JSON
holds the customer's e-mail, or one of their shop customer ids as a `customer_id` or as the `id`
of a `customer` object, loses its body too and is marked failed, so it can never create the
customer again. Run it before the customer's fields are cleared.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from crm_ledger.db.models import Customer, IngestCustomerLink, IngestDelivery
from crm_ledger.journal.customers import normalise_email

ERASED_BEFORE_MAPPING = "the customer's personal data was erased before this delivery was mapped"


def erase_ingest_copies(session: Session, customer_pk: int) -> None:
    """Delete the customer's raw deliveries and shop links (flushes; the caller commits)."""
    email = session.scalar(select(Customer.email).where(Customer.pk == customer_pk))
    external_ids = set(
        session.scalars(
            select(IngestCustomerLink.external_id).where(
                IngestCustomerLink.customer_pk == customer_pk
            )
        )
    )
    session.execute(
        update(IngestDelivery)
        .where(IngestDelivery.customer_pk == customer_pk, IngestDelivery.body.is_not(None))
        .values(body=None)
    )
    unmapped = session.execute(
        select(IngestDelivery.pk, IngestDelivery.body).where(
            IngestDelivery.status.in_(("pending", "failed")),
            IngestDelivery.customer_pk.is_(None),
            IngestDelivery.body.is_not(None),
        )
    ).all()
    wanted_email = normalise_email(email) if email else None
    for pk, body in unmapped:
        if _mentions(body, wanted_email, external_ids):
            session.execute(
                update(IngestDelivery)
                .where(IngestDelivery.pk == pk)
                .values(
                    body=None, status="failed", error=ERASED_BEFORE_MAPPING, customer_pk=customer_pk
                )
            )
    session.execute(delete(IngestCustomerLink).where(IngestCustomerLink.customer_pk == customer_pk))


def _mentions(body: bytes, email: str | None, external_ids: set[str]) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return _walk(document, email, external_ids, parent_key=None)


def _walk(value: Any, email: str | None, ids: set[str], *, parent_key: str | None) -> bool:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "customer_id" and str(item) in ids:
                return True
            if key == "id" and parent_key == "customer" and str(item) in ids:
                return True
            if _walk(item, email, ids, parent_key=key):
                return True
        return False
    if isinstance(value, list):
        return any(_walk(item, email, ids, parent_key=parent_key) for item in value)
    return email is not None and isinstance(value, str) and normalise_email(value) == email
