"""/v1/interactions, /v1/orders, /v1/records: write records, read them, fetch their receipts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter
from sqlalchemy.orm import Session
from starlette.responses import Response

from crm_ledger import metrics
from crm_ledger.api.deps import AnyKey, SessionDep, SettingsDep, problem_responses
from crm_ledger.api.idempotency import Written, json_response
from crm_ledger.api.privacy import ERASED_REPLAY
from crm_ledger.api.schemas import record_public, record_public_json, records_public_json
from crm_ledger.api.transaction import read_only
from crm_ledger.api.writes import RecorderWrites
from crm_ledger.journal import receipts, records
from crm_ledger.journal.records import RecordView
from crm_ledger.journal.schemas import InteractionBatchCreate, InteractionCreate, OrderCreate
from crm_ledger.schemas import ReceiptPending, ReceiptPublic, RecordPublic, RecordsPublic

router = APIRouter(tags=["records"])

# How long a client should wait before asking again for a receipt that is not ready.
RECEIPT_RETRY_SECONDS = 1

_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429)


def _count(kind: str, n: int = 1) -> Callable[[], None]:
    def count() -> None:
        metrics.records_written_total.labels(kind).inc(n)

    return count


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One interaction or order: written alone, or with the other single record writes of its
    group in one bulk write (`api.group_commit.Combinable`; `records.record_each`)."""

    payload: InteractionCreate | OrderCreate

    def __call__(self, session: Session) -> Written:
        """The write alone."""
        if isinstance(self.payload, OrderCreate):
            return _written(records.record_order(session=session, payload=self.payload))
        return _written(records.record_interaction(session=session, payload=self.payload))

    @staticmethod
    def bulk(session: Session, writes: list[RecordWrite]) -> list[Written]:
        """The records of `writes`, one statement for all, each answer as alone."""
        views = records.record_each(session=session, payloads=[w.payload for w in writes])
        return [_written(view) for view in views]


def _written(record: RecordView) -> Written:
    return Written(record_public_json(record), [record.customer_id])


@router.post(
    "/v1/interactions",
    status_code=201,
    response_model=RecordPublic,
    responses={**_ERRORS, **ERASED_REPLAY},
    summary="Record an interaction (recorder, admin)",
)
async def create_interaction(payload: InteractionCreate, writes: RecorderWrites) -> Response:
    """Commit one interaction to the journal; it is anchored on chain asynchronously."""
    write = RecordWrite(payload)
    return await writes.run(payload, write, status_code=201, on_commit=_count("interaction"))


@router.post(
    "/v1/interactions/batch",
    status_code=201,
    response_model=RecordsPublic,
    responses={**_ERRORS, **ERASED_REPLAY},
    summary="Record several interactions at once, all or none (recorder, admin)",
)
async def create_interactions(
    payload: InteractionBatchCreate, settings: SettingsDep, writes: RecorderWrites
) -> Response:
    """Commit up to `max_batch_items` interactions in one transaction; answers in request order."""

    def write(session: Session) -> Written:
        written = records.record_interactions(
            session=session, payloads=payload.items, max_items=settings.max_batch_items
        )
        return Written(records_public_json(written), [r.customer_id for r in written])

    on_commit = _count("interaction", len(payload.items))
    return await writes.run(payload, write, status_code=201, on_commit=on_commit)


@router.post(
    "/v1/orders",
    status_code=201,
    response_model=RecordPublic,
    responses={**_ERRORS, **ERASED_REPLAY},
    summary="Record an order (recorder, admin)",
)
async def create_order(payload: OrderCreate, writes: RecorderWrites) -> Response:
    """Commit one order; `total` must equal the sum of quantity * unit_price over its lines."""
    write = RecordWrite(payload)
    return await writes.run(payload, write, status_code=201, on_commit=_count("order"))


@router.get(
    "/v1/records/{record_id}",
    response_model=RecordPublic,
    responses=_ERRORS,
    summary="Fetch a record (any role)",
)
def get_record(record_id: str, session: SessionDep, key: AnyKey) -> Response:
    """One record: its committed body, commitment and anchoring status."""
    with read_only(session):
        record = records.get_record(session=session, record_id=record_id)
    return json_response(record_public(record))


@router.get(
    "/v1/records/{record_id}/receipt",
    responses={
        200: {
            "model": ReceiptPublic,
            "description": 'The receipt, format "crm-ledger/receipt/v1" (docs/ledger-format.md)',
        },
        202: {"model": ReceiptPending, "description": "Not anchored yet; see Retry-After"},
        **_ERRORS,
    },
    summary="Fetch a record's inclusion receipt (any role)",
)
def get_receipt(record_id: str, session: SessionDep, key: AnyKey) -> Response:
    """The record's RFC 9162 inclusion proof and where its batch is anchored, once it is."""
    with read_only(session):
        record = records.find_record(session=session, record_id=record_id)
        if receipts.anchored_batch(session, record) is None:
            pending = ReceiptPending(
                status="pending",
                record_id=record.id,
                retry_after=RECEIPT_RETRY_SECONDS,
                detail="the record is in the journal; its batch is not anchored on chain yet",
            )
            return json_response(
                pending, status_code=202, headers={"Retry-After": str(RECEIPT_RETRY_SECONDS)}
            )
        receipt = receipts.build_receipt(session, record)
    return json_response(json.dumps(receipt, separators=(",", ":")))
