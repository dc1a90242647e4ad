"""/healthz, /readyz and /metrics: for load balancers, orchestrators and Prometheus."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from crm_ledger import metrics
from crm_ledger.api.deps import RuntimeDep
from crm_ledger.api.idempotency import json_response
from crm_ledger.api.transaction import read_only
from crm_ledger.db.models import utcnow
from crm_ledger.journal.records import anchoring_backlog

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class DatabaseHealth(BaseModel):
    """Whether the database answered; if not, the kind of error (never its message)."""

    ok: bool
    error: str | None = None


class AnchoringBacklog(BaseModel):
    """Records in the journal that no anchored batch holds yet, and the oldest one's age."""

    pending_records: int
    lag_seconds: float


class Readiness(BaseModel):
    """Whether the service can do its job: the database, the anchoring backlog, the chain."""

    status: Literal["ready", "unavailable"]
    database: DatabaseHealth
    anchoring: AnchoringBacklog | None = Field(description="null when the database is down")
    chain: dict[str, Any] = Field(
        description="the chain connection's state and each background worker's: `state` "
        "(running, standby, backing_off, halted, ...) and what the worker reports"
    )


@router.get(
    "/healthz",
    response_model=Health,
    responses={200: {"description": 'The process is up: always `{"status": "ok"}`'}},
    summary="Is the process up",
)
async def healthz() -> Health:
    """200 whenever the process can answer at all."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        200: {"description": "Ready: the database, the chain and each worker's state"},
        503: {"model": Readiness, "description": "Not ready, and why (the same fields)"},
    },
    summary="Can the service do its job",
)
def readyz(runtime: RuntimeDep) -> Response:
    """Database reachable, chain status, and the anchoring backlog; 503 when not ready.

    Not ready means the database cannot be reached, or anchoring or another background worker
    has halted (a chain reset, settings that cannot work: an operator must act). A chain that
    is merely unavailable keeps the service ready, because writes still commit to the journal
    and anchor later; the backlog shows the lag.
    """
    body: dict[str, Any] = {"status": "ready"}
    ready = True
    try:
        with runtime.session_factory() as session, read_only(session):
            session.execute(text("SELECT 1"))
            backlog = anchoring_backlog(session=session)
    except SQLAlchemyError as exc:
        log.warning("readiness: database unreachable: %s", exc)
        ready = False
        body["database"] = {"ok": False, "error": type(exc).__name__}
        body["anchoring"] = None
    else:
        oldest = backlog.oldest_created_at
        lag = max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0
        body["database"] = {"ok": True}
        body["anchoring"] = {"pending_records": backlog.pending, "lag_seconds": round(lag, 3)}
    chain = dict(runtime.chain_status)
    body["chain"] = chain
    halted_workers = [
        name for name, worker in chain.get("workers", {}).items() if worker["state"] == "halted"
    ]
    if chain.get("state") == "halted" or halted_workers:
        ready = False
    if not ready:
        body["status"] = "unavailable"
    return json_response(json.dumps(body, default=str), 200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST: {}},
        }
    },
    summary="Prometheus metrics",
)
def prometheus_metrics() -> Response:
    """Every metric of the service, in the Prometheus text format: whichever of `serve`'s
    processes answers, the figures of all of them (`crm_ledger.metrics`)."""
    return Response(content=metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
