"""What the ledger tells Salesforce about a customer, and the Bulk API 2.0 CSV that carries it.

Exports: `ContactValues`, `contact_values`, `contact_csv`, `placeholder_last_name`, `FIELDS`,
`EXTERNAL_ID_FIELD`, `LAST_NAME_FIELD`, `NULL_VALUE`.

A Contact gets four ledger fields and nothing personal (docs/salesforce.md):

    CRM_Ledger_Id__c      the customer's id in the ledger (a UUID): the upsert's external id
    Loyalty_Balance__c    points of the customer's lots issued on chain and not yet spent or expired
    Last_Interaction__c   when the newest interaction was recorded (UTC)
    Ledger_Integrity__c   the customer's integrity by the latest ledger audit (clean, discrepancies,
                          unknown, failed, never_audited)

A Contact that does not exist yet also needs `LastName` (Salesforce requires it): the sync sends a
pseudonym, "CRM Ledger <first 8 hex of the id>", only for those. Values are hashed
(`ContactValues.digest`) so the sync sends a customer again only when something changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_ledger.crm.view import customer_integrity
from crm_ledger.db.models import AuditReport, Customer, LoyaltyIssuance, Record
from crm_ledger.ledger.leaf import RecordKind
from crm_ledger.loyalty.lots import LotStatus

__all__ = [
    "EXTERNAL_ID_FIELD",
    "FIELDS",
    "LAST_NAME_FIELD",
    "NULL_VALUE",
    "ContactValues",
    "contact_csv",
    "contact_values",
    "placeholder_last_name",
]

EXTERNAL_ID_FIELD = "CRM_Ledger_Id__c"
LAST_NAME_FIELD = "LastName"
FIELDS = (EXTERNAL_ID_FIELD, "Loyalty_Balance__c", "Last_Interaction__c", "Ledger_Integrity__c")
#: How a Bulk API CSV sets a field to null (an empty value leaves the field as it is).
NULL_VALUE = "#N/A"


@dataclass(frozen=True, slots=True)
class ContactValues:
    """The ledger fields of one customer's Contact."""

    customer_id: str
    loyalty_balance: int
    last_interaction_at: datetime | None
    integrity: str

    def row(self) -> list[str]:
        """The CSV cells, in `FIELDS` order."""
        last = self.last_interaction_at
        return [
            self.customer_id,
            str(self.loyalty_balance),
            _salesforce_datetime(last) if last is not None else NULL_VALUE,
            self.integrity,
        ]

    def digest(self) -> bytes:
        """SHA-256 of the values: equal digests mean nothing to send."""
        return hashlib.sha256(json.dumps(self.row()).encode()).digest()


def placeholder_last_name(customer_id: str) -> str:
    """The pseudonymous LastName a Contact created by the sync gets."""
    return f"CRM Ledger {customer_id[:8]}"


def contact_values(session: Session, customer_pks: Sequence[int]) -> list[ContactValues]:
    """The ledger fields of these customers, in `customer_pks` order (unknown pks skipped)."""
    if not customer_pks:
        return []
    customers = {
        customer.pk: customer
        for customer in session.scalars(select(Customer).where(Customer.pk.in_(customer_pks)))
    }
    balances = dict(
        session.execute(
            select(LoyaltyIssuance.customer_pk, func.sum(LoyaltyIssuance.remaining))
            .where(
                LoyaltyIssuance.customer_pk.in_(customer_pks),
                LoyaltyIssuance.status == LotStatus.ISSUED.value,
            )
            .group_by(LoyaltyIssuance.customer_pk)
        )
        .tuples()
        .all()
    )
    last_interactions = dict(
        session.execute(
            select(Record.customer_pk, func.max(Record.created_at))
            .where(
                Record.customer_pk.in_(customer_pks),
                Record.kind == int(RecordKind.INTERACTION),
            )
            .group_by(Record.customer_pk)
        )
        .tuples()
        .all()
    )
    ledger_integrity = _ledger_integrity(session)
    values = []
    for pk in customer_pks:
        customer = customers.get(pk)
        if customer is None:
            continue
        integrity = (
            ledger_integrity or customer_integrity(session=session, customer=customer).status
        )
        values.append(
            ContactValues(
                customer_id=customer.id,
                loyalty_balance=int(balances.get(pk) or 0),
                last_interaction_at=_aware(last_interactions.get(pk)),
                integrity=integrity,
            )
        )
    return values


def contact_csv(rows: Iterable[ContactValues], *, create: frozenset[str] = frozenset()) -> str:
    """A Bulk API 2.0 upsert CSV (LF line endings); ids in `create` also get a LastName."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIELDS, LAST_NAME_FIELD] if create else FIELDS)
    for values in rows:
        cells = values.row()
        if create:
            # An empty cell leaves an existing Contact's LastName alone.
            name = values.customer_id in create
            cells.append(placeholder_last_name(values.customer_id) if name else "")
        writer.writerow(cells)
    return out.getvalue()


def _ledger_integrity(session: Session) -> str | None:
    """The status every customer shares, or None when the latest audit found discrepancies."""
    latest = session.execute(
        select(AuditReport.status, AuditReport.clean)
        .where(AuditReport.status.in_(["done", "failed"]))
        .order_by(AuditReport.pk.desc())
        .limit(1)
    ).first()
    if latest is None:
        return "never_audited"
    if latest.status == "failed":
        return "failed"
    return "clean" if latest.clean else None


def _salesforce_datetime(value: datetime) -> str:
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
