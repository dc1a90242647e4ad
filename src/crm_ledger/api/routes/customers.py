"""/v1/customers: create, fetch and list customers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session
from starlette.responses import Response

from crm_ledger.api.deps import AnyKey, RecorderKey, SessionDep, problem_responses
from crm_ledger.api.idempotency import JSON_MEDIA_TYPE, IdempotencyDep, run_write
from crm_ledger.api.schemas import customer_public
from crm_ledger.api.transaction import read_only
from crm_ledger.journal import customers
from crm_ledger.journal.customers import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from crm_ledger.journal.schemas import CustomerCreate
from crm_ledger.schemas import CustomerPublic, CustomersPublic

router = APIRouter(prefix="/v1/customers", tags=["customers"])

_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429)


@router.post(
    "",
    status_code=201,
    response_class=Response,
    responses={201: {"model": CustomerPublic}, **_ERRORS},
    summary="Create a customer (recorder, admin)",
)
def create_customer(
    payload: CustomerCreate, session: SessionDep, key: RecorderKey, idempotency: IdempotencyDep
) -> Response:
    """Create a customer with a fresh commitment key; `external_ref` must be unique."""

    def write(session: Session) -> str:
        customer = customers.create_customer(session=session, payload=payload)
        return customer_public(customer).model_dump_json()

    return run_write(
        session=session,
        principal=key,
        idempotency=idempotency,
        payload=payload,
        status_code=201,
        write=write,
    )


@router.get(
    "/{customer_id}",
    response_class=Response,
    responses={200: {"model": CustomerPublic}, **_ERRORS},
    summary="Fetch a customer (any role)",
)
def get_customer(customer_id: str, session: SessionDep, key: AnyKey) -> Response:
    """One customer by id."""
    with read_only(session):
        customer = customers.get_customer(session=session, customer_id=customer_id)
        body = customer_public(customer).model_dump_json()
    return Response(content=body, media_type=JSON_MEDIA_TYPE)


@router.get(
    "",
    response_class=Response,
    responses={200: {"model": CustomersPublic}, **_ERRORS},
    summary="List customers (any role)",
)
def list_customers(
    session: SessionDep,
    key: AnyKey,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Customers in creation order; follow `next_cursor` until it is null."""
    with read_only(session):
        page = customers.list_customers(session=session, limit=limit, cursor=cursor)
        body = CustomersPublic(
            items=[customer_public(c) for c in page.items], next_cursor=page.next_cursor
        ).model_dump_json()
    return Response(content=body, media_type=JSON_MEDIA_TYPE)
