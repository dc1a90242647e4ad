"""/v1/webhooks/{platform}/{source_id}: where shops post their webhooks.

No API key (a shop cannot send one): each delivery is authenticated by the platform's own
signature over the raw body (`ingest.signatures`), stored durably, and answered 200 before it
is mapped (`ingest.inbox`, `ingest.worker`). WooCommerce's ping when a webhook is saved is
answered 200 and stored nowhere.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from crm_ledger.api.deps import RuntimeDep, SessionDep
from crm_ledger.api.group_commit import committer_for
from crm_ledger.api.idempotency import JSON_MEDIA_TYPE
from crm_ledger.api.problems import Problem
from crm_ledger.api.transaction import read_only
from crm_ledger.errors import NotFound
from crm_ledger.ingest import inbox
from crm_ledger.ingest.schemas import WebhookAccepted
from crm_ledger.ingest.signatures import Platform

router = APIRouter(tags=["webhooks"])

WEBHOOK_PATH = "/v1/webhooks/{platform}/{source_id}"
#: The worker that maps what this endpoint stores (`crm_ledger.ingest.worker.IngestWorker`).
INGEST_WORKER = "ingest"

_PROBLEM: dict[str, Any] = {"model": Problem, "content": {"application/problem+json": {}}}


@router.post(
    WEBHOOK_PATH,
    response_class=Response,
    responses={
        200: {"model": WebhookAccepted, "description": "Stored (or already stored), or a ping"},
        400: {**_PROBLEM, "description": "The signed body is not a JSON object"},
        401: {**_PROBLEM, "description": "Missing or wrong signature: nothing stored"},
        404: {**_PROBLEM, "description": "No such source (or deleted, or another platform)"},
        413: {**_PROBLEM, "description": "Body over CRM_LEDGER_MAX_WEBHOOK_BODY_BYTES"},
    },
    summary="Receive a shop's webhook (signed by the platform; no API key)",
)
async def receive_webhook(
    platform: str,
    source_id: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Response:
    """Verify the platform's signature over the raw body, store it, answer 200."""
    if platform not in Platform.__members__.values():
        names = ", ".join(p.value for p in Platform)
        raise NotFound(f"no platform {platform[:32]!r}: webhook URLs name one of {names}")
    body = await request.body()
    headers = {name.lower(): value for name, value in request.headers.items()}
    answer = await run_in_threadpool(_accept, session, platform, source_id, headers, body)
    if answer.delivery_id is not None and not answer.duplicate:
        runtime.supervisor.wake(INGEST_WORKER)
    return Response(content=answer.model_dump_json(), media_type=JSON_MEDIA_TYPE)


def _accept(
    session: Session,
    platform: str,
    source_id: str,
    headers: dict[str, str],
    body: bytes,
) -> WebhookAccepted:
    """Verify, then store durably (group commit): committed when this returns."""
    with read_only(session):
        checked = inbox.check_delivery(
            session=session,
            platform=platform,
            source_id=source_id,
            headers=headers,
            body=body,
        )
    if checked is None:
        return WebhookAccepted(accepted=True, duplicate=False, delivery_id=None)
    row = inbox.pending_row(
        source_pk=checked.source_pk,
        delivery_id=checked.delivery_id,
        topic=checked.topic,
        body=body,
    )
    try:
        committer_for(session).run(lambda tx: inbox.insert_deliveries(tx, [row]))
    except IntegrityError:
        # Two identical deliveries raced: the unique constraint let one through.
        with read_only(session):
            known = inbox.stored_delivery_ids(session, checked.source_pk, [checked.delivery_id])
        if not known:
            raise
        return WebhookAccepted(accepted=True, duplicate=True, delivery_id=checked.delivery_id)
    return WebhookAccepted(accepted=True, duplicate=False, delivery_id=checked.delivery_id)
