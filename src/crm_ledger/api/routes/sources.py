"""/v1/sources: the shops that send webhooks (admin), their deliveries and clawbacks.

Creating and rotating take an `Idempotency-Key` like every POST; secrets are never returned.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from crm_ledger.api.deps import (
    AdminKey,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    problem_responses,
)
from crm_ledger.api.idempotency import NoBody, json_response
from crm_ledger.api.routes.webhooks import INGEST_WORKER
from crm_ledger.api.transaction import read_only, transaction
from crm_ledger.api.writes import AdminWrites
from crm_ledger.ingest import clawback, inbox, sources
from crm_ledger.ingest.inbox import DeliveryStatus
from crm_ledger.ingest.schemas import (
    ClawbacksPublic,
    DeliveriesPublic,
    DeliveryPublic,
    SourceCreate,
    SourcePublic,
    SourceRotate,
    SourcesPublic,
)

router = APIRouter(tags=["sources"])


_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429)


def _base_url(request: Request) -> str:
    return str(request.base_url)


@router.post(
    "/v1/sources",
    status_code=201,
    response_model=SourcePublic,
    responses=_ERRORS,
    summary="Add a shop that sends webhooks (admin)",
)
def create_source(payload: SourceCreate, request: Request, writes: AdminWrites) -> Response:
    """A source with its `webhook_url`: paste that URL and the secret in the shop's admin."""
    base_url = _base_url(request)

    def write(tx: Session) -> str:
        source = sources.create_source(session=tx, payload=payload)
        return sources.source_public(source, base_url=base_url).model_dump_json()

    return writes.run_sync(payload, write, status_code=201)


@router.get(
    "/v1/sources",
    response_model=SourcesPublic,
    responses=_ERRORS,
    summary="List the shops (admin)",
)
def list_sources(request: Request, session: SessionDep, key: AdminKey) -> Response:
    """Every source, deleted ones included, oldest first."""
    base_url = _base_url(request)
    with read_only(session):
        items = [
            sources.source_public(s, base_url=base_url)
            for s in sources.list_sources(session=session)
        ]
    return json_response(SourcesPublic(items=items))


@router.get(
    "/v1/sources/{source_id}",
    response_model=SourcePublic,
    responses=_ERRORS,
    summary="Fetch a shop (admin)",
)
def get_source(source_id: str, request: Request, session: SessionDep, key: AdminKey) -> Response:
    """One source (never its secret)."""
    with read_only(session):
        source = sources.get_source(session=session, source_id=source_id)
        return json_response(sources.source_public(source, base_url=_base_url(request)))


@router.delete(
    "/v1/sources/{source_id}",
    response_model=SourcePublic,
    responses=_ERRORS,
    summary="Stop accepting a shop's webhooks (admin)",
)
def delete_source(source_id: str, request: Request, session: SessionDep, key: AdminKey) -> Response:
    """Its webhooks are refused (404) from now on; what it delivered stays."""
    with transaction(session):
        source = sources.delete_source(session=session, source_id=source_id)
        return json_response(sources.source_public(source, base_url=_base_url(request)))


@router.post(
    "/v1/sources/{source_id}/rotate",
    response_model=SourcePublic,
    responses=_ERRORS,
    summary="Replace a shop's secret; the old one is accepted for a grace period (admin)",
)
def rotate_source(
    source_id: str,
    payload: SourceRotate,
    request: Request,
    settings: SettingsDep,
    writes: AdminWrites,
) -> Response:
    """The old secret keeps verifying until `previous_secret_valid_until`
    (`CRM_LEDGER_INGEST_ROTATION_GRACE_SECONDS`, 24 hours by default)."""
    base_url = _base_url(request)

    def write(tx: Session) -> str:
        source = sources.rotate_source(
            session=tx, settings=settings, source_id=source_id, payload=payload
        )
        return sources.source_public(source, base_url=base_url).model_dump_json()

    return writes.run_sync(payload, write)


@router.get(
    "/v1/sources/{source_id}/deliveries",
    response_model=DeliveriesPublic,
    responses=_ERRORS,
    summary="List a shop's webhook deliveries, e.g. the failed ones (admin)",
)
def list_deliveries(
    source_id: str,
    session: SessionDep,
    key: AdminKey,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> Response:
    """Deliveries newest first, with their status and error; never their body."""
    with read_only(session):
        items, next_cursor = inbox.list_deliveries(
            session=session, source_id=source_id, status=status, limit=limit, cursor=cursor
        )
        page = DeliveriesPublic(
            items=[inbox.delivery_public(d) for d in items], next_cursor=next_cursor
        )
    return json_response(page)


@router.post(
    "/v1/sources/{source_id}/deliveries/{delivery_id}/retry",
    response_model=DeliveryPublic,
    responses=_ERRORS,
    summary="Map a failed delivery again (admin)",
)
def retry_delivery(
    source_id: str,
    delivery_id: str,
    runtime: RuntimeDep,
    writes: AdminWrites,
) -> Response:
    """The delivery goes back to `pending`; the ingest worker maps it on its next step."""

    def write(tx: Session) -> str:
        delivery = inbox.retry_delivery(session=tx, source_id=source_id, delivery_id=delivery_id)
        return inbox.delivery_public(delivery).model_dump_json()

    return writes.run_sync(
        NoBody(), write, on_commit=lambda: runtime.supervisor.wake(INGEST_WORKER)
    )


@router.get(
    "/v1/sources/{source_id}/clawbacks",
    response_model=ClawbacksPublic,
    responses=_ERRORS,
    summary="Loyalty points taken back for a shop's refunded or cancelled orders (admin)",
)
def list_clawbacks(source_id: str, session: SessionDep, key: AdminKey) -> Response:
    """Each clawback: points asked back, burnt, and the shortfall the customer had spent."""
    with read_only(session):
        source = sources.get_source(session=session, source_id=source_id)
        items = clawback.list_clawbacks(session, source_pk=source.pk)
    return json_response(ClawbacksPublic(items=items))
