"""/v1/crm: the customer 360 view, the CRM customer list, and reconciliation.

Reads are open to every role: the CRM, the shop and the support desk (recorder), marketing,
auditors and admins all work from the same view; personal fields only for the roles
`personal_data_roles` names, each such read journaled as access records (`api.privacy`).
Starting a reconciliation (which may repair the journal's anchoring state) is for auditors and
admins.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from crm_ledger.api.deps import (
    AnyKey,
    AuditorKey,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    problem_responses,
)
from crm_ledger.api.idempotency import json_response
from crm_ledger.api.privacy import (
    PERSONAL_READ_ERRORS,
    PurposeDep,
    journal_reads,
    sees_personal_data,
)
from crm_ledger.api.transaction import read_only
from crm_ledger.crm import view
from crm_ledger.crm.schemas import CustomerSummaries, CustomerView, ReconciliationPublic
from crm_ledger.errors import NotFound
from crm_ledger.indexer import reconcile

router = APIRouter(prefix="/v1/crm", tags=["crm"])
log = logging.getLogger(__name__)

_ERRORS = problem_responses(401, 403, 404, 422, 429)


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerView,
    responses={**_ERRORS, **PERSONAL_READ_ERRORS},
    summary="A customer's 360 view (any role)",
)
def customer_360(
    customer_id: str,
    session: SessionDep,
    settings: SettingsDep,
    key: AnyKey,
    purpose: PurposeDep,
    timeline_limit: Annotated[int, Query(ge=1, le=view.MAX_TIMELINE_SIZE)] = (
        view.DEFAULT_TIMELINE_SIZE
    ),
    timeline_cursor: Annotated[str | None, Query(max_length=512)] = None,
    kinds: Annotated[
        str | None,
        Query(
            max_length=200,
            description="comma-separated timeline kinds: " + ", ".join(view.TIMELINE_KINDS),
        ),
    ] = None,
) -> Response:
    """Profile, records by ledger state, loyalty balance (the chain's), the customer's integrity
    as the latest ledger audit found it, and the timeline, newest first, each item with its
    ledger state (`pending`, `anchored`, `confirmed`) and its batch, transaction and block."""
    personal_view = sees_personal_data(settings, key)
    with read_only(session):
        found = view.customer_view(
            session=session,
            customer_id=customer_id,
            timeline_limit=timeline_limit,
            timeline_cursor=timeline_cursor,
            kinds=_split(kinds),
            show_personal=personal_view,
        )
    if personal_view:
        journal_reads(
            session=session,
            principal=key,
            customer_ids=[found.customer.id] if found.customer.erased_at is None else [],
            purpose=purpose,
            operation="crm.customer_view",
        )
    return json_response(found)


@router.get(
    "/customers",
    response_model=CustomerSummaries,
    responses={**_ERRORS, **PERSONAL_READ_ERRORS},
    summary="Search, filter and sort customers (any role)",
)
def crm_customers(
    session: SessionDep,
    settings: SettingsDep,
    key: AnyKey,
    purpose: PurposeDep,
    limit: Annotated[int, Query(ge=1, le=view.MAX_PAGE_SIZE)] = view.DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    sort: Annotated[
        str,
        Query(
            max_length=40,
            description="one of "
            + ", ".join(view.SORT_KEYS)
            + "; prefix '-' for descending. "
            + ", ".join(view.INDEXED_SORT_KEYS)
            + " pages in index order (a page reads its own rows); the others are computed "
            "for every matching customer on each page, so they are slower on large lists",
        ),
    ] = "-created_at",
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="an exact email (any case), part of the external ref, or the id",
        ),
    ] = None,
    tag: Annotated[str | None, Query(max_length=200)] = None,
    balance_min: Annotated[int | None, Query(ge=0)] = None,
    balance_max: Annotated[int | None, Query(ge=0)] = None,
    last_interaction_after: Annotated[datetime | None, Query()] = None,
    last_interaction_before: Annotated[datetime | None, Query()] = None,
) -> Response:
    """Customers with their last interaction and loyalty balance, newest first by default;
    follow `next_cursor` (a keyset cursor: pages do not shift when customers are added) with
    the same filters and sort."""
    personal_view = sees_personal_data(settings, key)
    with read_only(session):
        page = view.list_customers(
            session=session,
            limit=limit,
            cursor=cursor,
            sort=sort,
            q=q,
            tag=tag,
            balance_min=balance_min,
            balance_max=balance_max,
            last_interaction_after=last_interaction_after,
            last_interaction_before=last_interaction_before,
            show_personal=personal_view,
        )
    if personal_view:
        journal_reads(
            session=session,
            principal=key,
            customer_ids=[item.id for item in page.items if item.erased_at is None],
            purpose=purpose,
            operation="crm.customers",
        )
    return json_response(page)


@router.get(
    "/reconciliation",
    response_model=ReconciliationPublic,
    responses=_ERRORS,
    summary="The latest reconciliation (any role)",
)
def latest_reconciliation(runtime: RuntimeDep, key: AnyKey) -> Response:
    """The latest run: `requested`, `running`, `failed` (with the error) or `done` (with every
    drift item found, and what was repaired)."""
    found = reconcile.latest_report(runtime.session_factory)
    if found is None:
        raise NotFound(
            "no reconciliation has run yet: the indexer runs one once it has caught up, or "
            "start one with POST /v1/crm/reconciliation"
        )
    return json_response(json.dumps(found))


@router.get(
    "/reconciliation/{report_id}",
    response_model=ReconciliationPublic,
    responses=_ERRORS,
    summary="One reconciliation run (any role)",
)
def reconciliation_run(report_id: str, runtime: RuntimeDep, key: AnyKey) -> Response:
    """A run by id, as `POST /v1/crm/reconciliation` returned it."""
    found = reconcile.latest_report(runtime.session_factory, report_id=report_id[:64])
    if found is None:
        raise NotFound(f"no reconciliation run with id {report_id[:64]!r}")
    return json_response(json.dumps(found))


@router.post(
    "/reconciliation",
    status_code=202,
    response_model=ReconciliationPublic,
    responses=_ERRORS,
    summary="Reconcile the database with the chain now (auditor, admin)",
)
async def start_reconciliation(request: Request, runtime: RuntimeDep, key: AuditorKey) -> Response:
    """Request a run; follow the `Location`. A run already requested or running is returned
    instead of a second one, so retrying is harmless. The process that runs the indexer runs
    it: at once if that is this process, otherwise when it is next idle."""
    found, made = await run_in_threadpool(reconcile.request_run, runtime.session_factory)
    reconciler = runtime.reconciler
    if made and reconciler is not None:
        task = asyncio.create_task(_run(reconciler, found["id"]))
        tasks: set[asyncio.Task[None]] = request.app.state.__dict__.setdefault(
            "reconciliation_tasks", set()
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return json_response(
        json.dumps(found),
        status_code=202,
        headers={"Location": f"/v1/crm/reconciliation/{found['id']}"},
    )


async def _run(reconciler: reconcile.Reconciler, report_id: str) -> None:
    try:
        await reconciler.run(trigger=reconcile.TRIGGER_API, report_id=report_id)
    except Exception:
        # Stored as the run's error; GET /v1/crm/reconciliation shows it.
        log.exception("reconciliation %s failed", report_id)
