"""Customers: create, fetch, list a page at a time, find by email, open personal fields.

Exports: `CustomerPage`, `create_customer`, `add_customer`, `get_customer`, `list_customers`,
`find_customer_by_email`, `update_personal_fields`, `personal_fields`, `personal_fields_of`,
`encode_cursor`, `decode_cursor`, `public_fields`, `DEFAULT_PAGE_SIZE`, `MAX_PAGE_SIZE`.

Personal fields are sealed on the way in and opened on the way out with the key ring of the
session's database (`crm_ledger.journal.privacy`); nothing here stores them in the clear.

Writers flush but do not commit: the caller owns the transaction (the API commits the customer
and its idempotency entry together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crm_ledger import cursors
from crm_ledger.db.models import Customer, new_id, utcnow
from crm_ledger.errors import Conflict, NotFound, Unprocessable
from crm_ledger.journal.privacy import (
    KeyRing,
    PersonalFields,
    keyring_of,
    new_data_key,
    open_personal,
    seal_personal,
    unwrap_data_key,
    wrap_data_key,
)
from crm_ledger.journal.schemas import CustomerCreate, format_timestamp, is_public_id, shorten
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
    customer = add_customer(
        session=session,
        fields=PersonalFields(name=payload.name, email=payload.email, phone=payload.phone),
        external_ref=payload.external_ref,
        tags=list(payload.tags),
    )
    try:
        session.flush()
    except IntegrityError:
        # Another transaction took the external_ref between our check and our insert.
        raise _external_ref_taken(payload.external_ref, None) from None
    return customer


def add_customer(
    *,
    session: Session,
    fields: PersonalFields,
    external_ref: str | None = None,
    tags: list[str] | None = None,
) -> Customer:
    """Add (not flushed) a customer with a fresh commitment key and data key, `fields` sealed
    under it and the email's blind index; no validation (`create_customer` validates)."""
    keyring = keyring_of(session)
    customer_id = new_id()
    data_key = new_data_key()
    customer = Customer(
        id=customer_id,
        wrapped_data_key=wrap_data_key(keyring, customer_id=customer_id, data_key=data_key),
        personal=seal_personal(data_key, customer_id=customer_id, fields=fields),
        email_index=(
            keyring.current.email_index(fields.email) if fields.email is not None else None
        ),
        external_ref=external_ref,
        tags=tags or [],
        key=new_customer_key(),
        created_at=utcnow(),
    )
    session.add(customer)
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


def update_personal_fields(
    *, session: Session, customer: Customer, name: str | None, email: str | None, phone: str | None
) -> None:
    """Replace what is given of the customer's name, email and phone (None: keep), resealed
    under the customer's data key with the blind index kept current. An erased customer has no
    data key: nothing is stored."""
    if customer.wrapped_data_key is None:
        return
    keyring = keyring_of(session)
    data_key = unwrap_data_key(keyring, customer_id=customer.id, wrapped=customer.wrapped_data_key)
    old = personal_fields_of(keyring, customer)
    fields = PersonalFields(
        name=name if name is not None else old.name,
        email=email if email is not None else old.email,
        phone=phone if phone is not None else old.phone,
    )
    customer.personal = seal_personal(data_key, customer_id=customer.id, fields=fields)
    customer.email_index = (
        keyring.current.email_index(fields.email) if fields.email is not None else None
    )
    session.flush()


def find_customer_by_email(session: Session, email: str) -> Customer | None:
    """The oldest unerased customer whose email matches `email` (trimmed, any case), or None.

    Matches on the blind index, so the email is never compared in the clear; during a master
    key rotation rows under either key are found.
    """
    keyring = keyring_of(session)
    return session.scalars(
        select(Customer)
        .where(Customer.email_index.in_(keyring.email_indexes(email)))
        .order_by(Customer.pk)
        .limit(1)
    ).first()


def personal_fields(session: Session, customer: Customer) -> PersonalFields:
    """The customer's name, email and phone in the clear (all None once erased)."""
    return personal_fields_of(keyring_of(session), customer)


def personal_fields_of(keyring: KeyRing, customer: Customer) -> PersonalFields:
    """`personal_fields` with the key ring at hand (for loops over many customers)."""
    if customer.wrapped_data_key is None or customer.personal is None:
        return PersonalFields()
    data_key = unwrap_data_key(keyring, customer_id=customer.id, wrapped=customer.wrapped_data_key)
    return open_personal(data_key, customer_id=customer.id, sealed=customer.personal)


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
    return cursors.pack_position(pk)


def decode_cursor(cursor: str) -> int:
    """The `pk` inside a cursor from `encode_cursor`; raises `Unprocessable` for anything else."""
    pk = cursors.unpack_position(cursor, maximum=_MAX_PK, max_length=_MAX_CURSOR_LENGTH)
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


def public_fields(customer: Customer, personal: PersonalFields | None) -> dict[str, Any]:
    """What every public shape of a customer shows (the API's `CustomerPublic`, the CRM's
    profile and list entry); `personal` None leaves the personal fields null."""
    shown = personal or PersonalFields()
    return {
        "id": customer.id,
        "name": shown.name,
        "email": shown.email,
        "phone": shown.phone,
        "external_ref": customer.external_ref,
        "tags": list(customer.tags or []),
        "created_at": format_timestamp(customer.created_at),
        "erased_at": format_timestamp(customer.erased_at) if customer.erased_at else None,
    }
