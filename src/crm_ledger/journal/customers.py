"""Customers: create, fetch, list a page at a time.

Exports: `CustomerPage`, `create_customer`, `get_customer`, `find_customer_by_email`,
`normalise_email`, `list_customers`, `encode_cursor`,
`decode_cursor`, `DEFAULT_PAGE_SIZE`, `MAX_PAGE_SIZE`.

Writers flush but do not commit: the caller owns the transaction (the API commits the customer
and its idempotency entry together).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crm_ledger.db.models import Customer, new_id, utcnow
from crm_ledger.errors import Conflict, NotFound, Unprocessable
from crm_ledger.journal.schemas import CustomerCreate, is_public_id, shorten
from crm_ledger.ledger.canonical import new_customer_key

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A cursor holds a pk, a signed 64-bit integer on every backend: 19 decimal digits at most.
_MAX_PK = 2**63 - 1
_MAX_CURSOR_LENGTH = 32


@dataclass(frozen=True, slots=True)
class CustomerPage:
    """One page of customers in creation order, and the cursor of the next page (or None)."""

    items: list[Customer]
    next_cursor: str | None


def create_customer(*, session: Session, payload: CustomerCreate) -> Customer:
    """Add a customer with a fresh commitment key.

    Raises `Conflict` when `external_ref` is already used by another customer.
    """
    if payload.external_ref is not None:
        taken = session.scalar(
            select(Customer.id).where(Customer.external_ref == payload.external_ref)
        )
        if taken is not None:
            raise _external_ref_taken(payload.external_ref, taken)
    customer = Customer(
        id=new_id(),
        name=payload.name,
        email=payload.email,
        phone=payload.phone,
        external_ref=payload.external_ref,
        tags=list(payload.tags),
        key=new_customer_key(),
        created_at=utcnow(),
    )
    session.add(customer)
    try:
        session.flush()
    except IntegrityError:
        # Another transaction took the external_ref between our check and our insert.
        raise _external_ref_taken(payload.external_ref, None) from None
    return customer


def get_customer(*, session: Session, customer_id: str) -> Customer:
    """The customer with public id `customer_id`; raises `NotFound`."""
    customer = None
    if is_public_id(customer_id):
        customer = session.scalars(
            select(Customer).where(Customer.id == customer_id.lower())
        ).first()
    if customer is None:
        shown = shorten(customer_id)
        raise NotFound(f"no customer with id {shown!r}", customer_id=shown)
    return customer


# Commerce ingest (issue 11): matching a shop's buyer by e-mail. --------------------------------


def normalise_email(email: str) -> str:
    """An e-mail address as customers are matched by it: trimmed, lower-case."""
    return email.strip().lower()


def find_customer_by_email(session: Session, email: str) -> Customer | None:
    """The oldest customer (not erased) whose e-mail is `email`, normalised; or None."""
    return session.scalars(
        select(Customer)
        .where(
            func.lower(func.trim(Customer.email)) == normalise_email(email),
            Customer.erased_at.is_(None),
        )
        .order_by(Customer.pk)
        .limit(1)
    ).first()


def list_customers(
    *, session: Session, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> CustomerPage:
    """Customers in creation order, `limit` (1 to 200) at a time, after `cursor` when given.

    Raises `Unprocessable` for a cursor this API did not issue or a limit out of range.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise Unprocessable(
            f"limit must be from 1 to {MAX_PAGE_SIZE}, got {limit}",
            errors=[_field_error("query", "limit", f"must be from 1 to {MAX_PAGE_SIZE}")],
        )
    query = select(Customer).order_by(Customer.pk).limit(limit + 1)
    if cursor is not None:
        query = query.where(Customer.pk > decode_cursor(cursor))
    rows = list(session.scalars(query))
    items = rows[:limit]
    next_cursor = encode_cursor(items[-1].pk) if len(rows) > limit else None
    return CustomerPage(items=items, next_cursor=next_cursor)


def encode_cursor(pk: int) -> str:
    """Opaque cursor pointing just after the row with this `pk`."""
    return base64.urlsafe_b64encode(str(pk).encode("ascii")).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> int:
    """The `pk` inside a cursor from `encode_cursor`; raises `Unprocessable` for anything else."""
    pk: int | None = None
    if 0 < len(cursor) <= _MAX_CURSOR_LENGTH and cursor.isascii():
        padded = cursor + "=" * (-len(cursor) % 4)
        try:
            digits = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            digits = ""
        if (
            digits.isdecimal()
            and digits.isascii()
            and int(digits) <= _MAX_PK
            and encode_cursor(int(digits)) == cursor
        ):
            pk = int(digits)
    if pk is None:
        raise Unprocessable(
            "cursor is not one this API issued: pass the next_cursor of the previous page "
            "unchanged, or omit it to start from the first page",
            errors=[_field_error("query", "cursor", "not a cursor issued by this API")],
        )
    return pk


def _external_ref_taken(external_ref: str | None, customer_id: str | None) -> Conflict:
    owner = f" by customer {customer_id}" if customer_id else ""
    return Conflict(
        f"external_ref {external_ref!r} is already used{owner}; external refs are unique",
        errors=[_field_error("body", "external_ref", "already used by another customer")],
    )


def _field_error(location: str, field: str, message: str) -> dict[str, str]:
    return {"location": location, "field": field, "message": message}
