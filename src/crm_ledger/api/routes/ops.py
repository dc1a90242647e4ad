"""/v1/me and /v1/ops: who the caller is, and the figures the console charts.

Any valid key may read `/v1/me`, `/v1/ops/overview` and `/v1/ops/chain`: they hold no personal
data (counts, gas, timestamps, the chain's location). The loyalty figures (a campaign's spend
over time, points expiring) are for marketing and admin keys, like the campaigns themselves.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.responses import Response

from crm_ledger.api.deps import (
    AnyKey,
    MarketingKey,
    RuntimeDep,
    SessionDep,
    problem_responses,
)
from crm_ledger.api.idempotency import json_response
from crm_ledger.api.transaction import read_only
from crm_ledger.audit.ledger import read_deployment
from crm_ledger.console.operations import (
    MAX_BATCHES,
    MAX_BUCKETS,
    MAX_MINUTES,
    CampaignSpend,
    ChainEndpoint,
    ExpiringPoints,
    OperationsOverview,
    browser_rpc_url,
    campaign_spend,
    expiring_points,
    operations_overview,
)

router = APIRouter(tags=["operations"])

_ERRORS = problem_responses(401, 422, 429)
_MARKETING_ERRORS = problem_responses(401, 403, 404, 422, 429)


class Me(BaseModel):
    """The calling key: its id and role (never the key itself)."""

    key_id: str
    role: str


@router.get(
    "/v1/me",
    response_model=Me,
    responses={**problem_responses(401, 429)},
    summary="The calling key's id and role (any role)",
)
def me(key: AnyKey) -> Response:
    """What the console asks after sign-in, to show only what the role may do."""
    return json_response(Me(key_id=key.id, role=key.role.value))


@router.get(
    "/v1/ops/overview",
    response_model=OperationsOverview,
    responses=_ERRORS,
    summary="Anchoring lag, records per minute, gas per record, batch sizes, indexer lag",
)
def overview(
    session: SessionDep,
    runtime: RuntimeDep,
    key: AnyKey,
    minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES)] = 60,
    batches: Annotated[int, Query(ge=1, le=MAX_BATCHES)] = 100,
) -> Response:
    """Per-minute records anchored, batches and gas for the last `minutes`; the last `batches`
    anchored batches with their size, gas per record and time from cut to mined; the backlog;
    the chain's and the indexer's state."""
    with read_only(session):
        found = operations_overview(
            session=session,
            minutes=minutes,
            batch_limit=batches,
            chain_status=runtime.chain_status,
        )
    return json_response(found)


@router.get(
    "/v1/ops/chain",
    response_model=ChainEndpoint,
    responses={**problem_responses(401, 429)},
    summary="The chain a browser verifies receipts against (any role)",
)
def chain_endpoint(runtime: RuntimeDep, key: AnyKey) -> Response:
    """Chain id, AuditLedger address and a JSON-RPC URL the console's verifier may call."""
    settings = runtime.settings
    service_url = runtime.connection.rpc_url
    deployment = read_deployment(runtime.engine)
    return json_response(
        ChainEndpoint(
            chain_id=deployment.chain_id if deployment is not None else None,
            contract=deployment.address if deployment is not None else None,
            epoch=deployment.epoch if deployment is not None else None,
            rpc_url=browser_rpc_url(configured=settings.console_rpc_url, service_url=service_url),
        )
    )


@router.get(
    "/v1/ops/campaigns/{campaign_id}/spend",
    response_model=CampaignSpend,
    responses=_MARKETING_ERRORS,
    summary="A campaign's issued points over time (marketing, admin)",
)
def spend(
    campaign_id: str,
    session: SessionDep,
    key: MarketingKey,
    bucket: Annotated[Literal["minute", "hour", "day"], Query()] = "hour",
    buckets: Annotated[int, Query(ge=1, le=MAX_BUCKETS)] = 48,
) -> Response:
    """Points confirmed on chain per bucket and their running total, for the budget chart."""
    with read_only(session):
        found = campaign_spend(
            session=session, campaign_id=campaign_id, bucket=bucket, buckets=buckets
        )
    return json_response(found)


@router.get(
    "/v1/ops/loyalty/expiring",
    response_model=ExpiringPoints,
    responses=_MARKETING_ERRORS,
    summary="Points expiring in the next days, by day (marketing, admin)",
)
def expiring(
    session: SessionDep,
    key: MarketingKey,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> Response:
    """Unspent points of lots on chain whose expiry falls in the next `days` days."""
    with read_only(session):
        found = expiring_points(session=session, days=days)
    return json_response(found)
