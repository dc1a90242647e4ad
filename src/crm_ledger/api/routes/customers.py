"""/v1/customers: create, fetch and list customers, and read a customer's access log.

Reads show personal fields only to the roles `personal_data_roles` names, and journal an access
record for each customer whose personal fields they show (`api.privacy`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session
from starlette.responses import Response

from crm_ledger.api.deps import AnyKey, AuditorKey, SessionDep, SettingsDep, problem_responses
from crm_ledger.api.idempotency import Written, json_response
from crm_ledger.api.privacy import (
    ERASED_REPLAY,
    PERSONAL_READ_ERRORS,
    PurposeDep,
    journal_reads,
    sees_personal_data,
)
from crm_ledger.api.schemas import AccessLogPublic, access_log_public, customer_public
from crm_ledger.api.transaction import read_only
from crm_ledger.api.writes import RecorderWrites
from crm_ledger.journal import access, customers
from crm_ledger.journal.customers import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from crm_ledger.journal.privacy import keyring_of
from crm_ledger.journal.schemas import CustomerCreate
from crm_ledger.schemas import CustomerPublic, CustomersPublic

router = APIRouter(prefix="/v1/customers", tags=["customers"])

_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429)


@router.post(
    "",
    status_code=201,
    response_model=CustomerPublic,
    responses={**_ERRORS, **ERASED_REPLAY},
    summary="Create a customer (recorder, admin)",
)
def create_customer(payload: CustomerCreate, writes: RecorderWrites) -> Response:
    """Create a customer with a fresh commitment key; `external_ref` must be unique."""

    def write(session: Session) -> Written:
        customer = customers.create_customer(session=session, payload=payload)
        personal = customers.personal_fields(session, customer)
        return Written(customer_public(customer, personal).model_dump_json(), [customer.id])

    return writes.run_sync(payload, write, status_code=201)


@router.get(
    "/{customer_id}",
    response_model=CustomerPublic,
    responses={**_ERRORS, **PERSONAL_READ_ERRORS},
    summary="Fetch a customer (any role; personal fields for the roles allowed them)",
)
def get_customer(
    customer_id: str,
    session: SessionDep,
    settings: SettingsDep,
    key: AnyKey,
    purpose: PurposeDep,
) -> Response:
    """One customer by id. Showing its personal fields journals an access record first."""
    personal_view = sees_personal_data(settings, key)
    with read_only(session):
        customer = customers.get_customer(session=session, customer_id=customer_id)
        personal = customers.personal_fields(session, customer) if personal_view else None
        body = customer_public(customer, personal).model_dump_json()
    if personal_view:
        journal_reads(
            session=session,
            principal=key,
            customer_ids=[customer.id] if customer.erased_at is None else [],
            purpose=purpose,
            operation="customers.get",
        )
    return json_response(body)


@router.get(
    "",
    response_model=CustomersPublic,
    responses={**_ERRORS, **PERSONAL_READ_ERRORS},
    summary="List customers (any role; personal fields for the roles allowed them)",
)
def list_customers(
    session: SessionDep,
    settings: SettingsDep,
    key: AnyKey,
    purpose: PurposeDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Customers in creation order; follow `next_cursor` until it is null. Showing personal
    fields journals an access record per customer shown."""
    personal_view = sees_personal_data(settings, key)
    with read_only(session):
        page = customers.list_customers(session=session, limit=limit, cursor=cursor)
        keyring = keyring_of(session) if personal_view else None
        body = CustomersPublic(
            items=[
                customer_public(c, customers.personal_fields_of(keyring, c) if keyring else None)
                for c in page.items
            ],
            next_cursor=page.next_cursor,
        ).model_dump_json()
    if personal_view:
        journal_reads(
            session=session,
            principal=key,
            customer_ids=[c.id for c in page.items if c.erased_at is None],
            purpose=purpose,
            operation="customers.list",
        )
    return json_response(body)


@router.get(
    "/{customer_id}/access-log",
    response_model=AccessLogPublic,
    responses=_ERRORS,
    summary="Who read the customer's personal data (auditor, admin)",
)
def get_access_log(
    customer_id: str,
    session: SessionDep,
    key: AuditorKey,
    limit: Annotated[int, Query(ge=1, le=access.MAX_PAGE_SIZE)] = access.DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The customer's access records, newest first: API key id, role, declared purpose,
    operation, and where each stands in anchoring. Reading it shows no personal field, so it
    leaves no access record of its own."""
    with read_only(session):
        page = access.access_log(
            session=session, customer_id=customer_id, limit=limit, cursor=cursor
        )
    return json_response(access_log_public(page))
