"""/v1/audit: check records, customers and the whole ledger; digests; bundles; erasure.

Audit endpoints need an `auditor` or `admin` key; erasing a customer's personal data
(`DELETE /v1/customers/{id}/personal-data`) needs `admin`. Handlers reach the chain through
`ChainProviderDep` (tests override `get_chain_provider`), and a chain that cannot be reached is a
503 problem: the request was fine, the node is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from crm_ledger.api.deps import (
    AdminKey,
    AuditorKey,
    RuntimeDep,
    SessionDep,
    problem_responses,
)
from crm_ledger.api.idempotency import json_response
from crm_ledger.api.problems import ChainUnreachable
from crm_ledger.api.transaction import transaction
from crm_ledger.audit.chain import ChainProvider, RpcChainProvider
from crm_ledger.audit.customer import audit_customer
from crm_ledger.audit.export import ledger_digest, open_export
from crm_ledger.audit.ledger import read_deployment
from crm_ledger.audit.reports import latest_report, run_stored_audit, start_report
from crm_ledger.audit.schemas import (
    CustomerAuditPublic,
    DigestCheckPublic,
    LedgerAuditPublic,
    RecordCheckPublic,
)
from crm_ledger.db.models import Customer, Deployment, Record
from crm_ledger.errors import (
    ChainError,
    ChainUnavailable,
    Conflict,
    FormatError,
    NotFound,
    Unprocessable,
)
from crm_ledger.journal import receipts, records
from crm_ledger.journal.erasure import erase_customer
from crm_ledger.journal.keys import Role
from crm_ledger.journal.receipts import AUDIT_LEDGER
from crm_ledger.journal.schemas import format_timestamp, is_public_id
from crm_ledger.ledger.receipts import Receipt
from crm_ledger.schemas import DigestPublic, ErasurePublic, RecordVerifyRequest
from crm_ledger.verifier.bundle import Scope
from crm_ledger.verifier.digest import Digest, verify_since
from crm_ledger.verifier.record import parse_content, parse_key, verify_record

router = APIRouter()
log = logging.getLogger(__name__)

BUNDLE_MEDIA_TYPE = "application/jsonl"
ERASURE_ATTEMPTS = 5
#: PostgreSQL: lock not available, deadlock detected, serialization failure.
_RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01", "40001"})

#: What GET /v1/audit/digest answers, as the example body of POST /v1/audit/digest/verify.
DIGEST_EXAMPLE = {
    "format": "crm-ledger/digest/v1",
    "batch": {
        "id": 7,
        "first_seq": 12000,
        "count": 2000,
        "root": "0x" + "3a" * 32,
        "previous_head": "0x" + "5c" * 32,
        "head": "0x" + "9e" * 32,
    },
    "chain": {
        "chain_id": 31337,
        "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "epoch": 1,
        "tx_hash": "0x" + "7d" * 32,
        "block_number": 42,
        "block_hash": "0x" + "1f" * 32,
    },
}


_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 429, 503)


def get_chain_provider(runtime: RuntimeDep) -> ChainProvider:
    """Read-only access to the node the service anchors to."""
    connection = runtime.connection
    return RpcChainProvider(
        rpc_url=connection.rpc_url or connection.embedded_url,
        timeout=runtime.settings.rpc_timeout_seconds,
    )


ChainProviderDep = Annotated[ChainProvider, Depends(get_chain_provider)]


def _unreachable(exc: ChainError) -> ChainUnreachable:
    if isinstance(exc, ChainUnavailable):
        return ChainUnreachable(f"the audit needs the chain, which cannot be reached: {exc}")
    return ChainUnreachable(f"the chain answered in a way the audit cannot use: {exc}")


def _unprocessable(exc: FormatError, field: str) -> Unprocessable:
    return Unprocessable(
        str(exc), errors=[{"location": "body", "field": field, "message": str(exc)}]
    )


# Record check ----------------------------------------------------------------------------


@router.post(
    "/v1/audit/verify",
    tags=["audit"],
    response_model=RecordCheckPublic,
    responses={200: {"description": "The verdict and each step"}, **_ERRORS},
    summary="Check a record's receipt, content and key against the chain (auditor, admin)",
)
async def verify(
    payload: RecordVerifyRequest,
    runtime: RuntimeDep,
    provider: ChainProviderDep,
    key: AuditorKey,
) -> Response:
    """Every step of docs/ledger-format.md section 7, each with its result, and a verdict.

    With `record_id`, the service's own receipt and committed document of that record are
    checked; with `receipt`, the receipt (and `content`, `customer_key`) you give.
    """
    receipt_json, content_json = await run_in_threadpool(
        _receipt_and_content, runtime.engine, payload
    )
    try:
        receipt = Receipt.from_json(receipt_json)
    except FormatError as exc:
        raise _unprocessable(exc, "receipt") from None
    try:
        content = parse_content(content_json)
    except FormatError as exc:
        raise _unprocessable(exc, "content") from None
    try:
        customer_key = parse_key(payload.customer_key)
    except FormatError as exc:
        raise _unprocessable(exc, "customer_key") from None
    stored_key, why, expected_contract = await run_in_threadpool(
        _stored_key_and_contract, runtime.engine, receipt
    )
    if content is None:
        why = "no content was given"
    try:
        async with provider.connect() as chain_for:
            check = await verify_record(
                receipt=receipt,
                content=content,
                key=customer_key if customer_key is not None else stored_key,
                chain=chain_for(expected_contract or receipt.chain.contract),
                expected_contract=expected_contract,
                unchecked_content=why,
            )
    except ChainError as exc:
        raise _unreachable(exc) from None
    return json_response(json.dumps({"record_id": receipt.record_id, **check.to_json()}))


def _receipt_and_content(engine: Engine, payload: RecordVerifyRequest) -> tuple[object, object]:
    """The receipt and content to check: the payload's, or the stored ones of `record_id`."""
    if (payload.record_id is None) == (payload.receipt is None):
        message = "give either `record_id` (a record of this service) or `receipt`, not both"
        if payload.record_id is None:
            message = "give `record_id` (a record of this service) or a `receipt` to check"
        raise Unprocessable(
            message, errors=[{"location": "body", "field": "record_id", "message": message}]
        )
    if payload.record_id is None:
        return payload.receipt, payload.content
    with Session(engine) as session, session.begin():
        record = records.find_record(session=session, record_id=payload.record_id)
        if receipts.anchored_batch(session, record) is None:
            raise Conflict(
                f"record {record.id} is in the journal but its batch is not anchored on chain "
                "yet: ask again in a second (GET /v1/records/{id}/receipt answers 202 meanwhile)"
            )
        receipt = receipts.build_receipt(session, record)
        stored = bytes(record.content).decode("utf-8") if record.content is not None else None
    return receipt, payload.content if payload.content is not None else stored


def _stored_key_and_contract(
    engine: Engine, receipt: Receipt
) -> tuple[bytes | None, str, str | None]:
    """The record's key as the service stores it (or why there is none), and the contract of
    the receipt's epoch."""
    with engine.connect() as conn:
        contract = conn.execute(
            select(Deployment.address).where(
                Deployment.contract == AUDIT_LEDGER, Deployment.epoch == receipt.chain.epoch
            )
        ).scalar()
        why = "the service has no record with this id, and no customer_key was given"
        stored: bytes | None = None
        if is_public_id(receipt.record_id):
            row = conn.execute(
                select(Record.key, Customer.key.label("customer_key"), Customer.erased_at)
                .join(Customer, Customer.pk == Record.customer_pk)
                .where(Record.id == receipt.record_id.lower())
            ).first()
            if row is not None:
                if row.key is not None:
                    stored = bytes(row.key)
                elif row.customer_key is not None:
                    stored = bytes(row.customer_key)
                elif row.erased_at is not None:
                    why = "the customer's personal data was erased: their key is gone"
                else:
                    why = "the service holds no key for this record's customer"
    return stored, why, str(contract) if contract is not None else None


# Customer audit ----------------------------------------------------------------------------


@router.get(
    "/v1/audit/customers/{customer_id}",
    tags=["audit"],
    response_model=CustomerAuditPublic,
    responses={200: {"description": "Each record's status and what differs"}, **_ERRORS},
    summary="Audit every record of one customer (auditor, admin)",
)
async def audit_one_customer(
    customer_id: str, runtime: RuntimeDep, provider: ChainProviderDep, key: AuditorKey
) -> Response:
    """Content → commitment → leaf → proof → root on chain for each record, and the customer's
    hash chain; each record `ok`, `pending`, `tampered`, `missing` or `erased`."""
    try:
        deployment = await run_in_threadpool(read_deployment, runtime.engine)
        async with provider.connect() as chain_for:
            report = await audit_customer(
                engine=runtime.engine,
                chain=chain_for(deployment.address) if deployment is not None else None,
                customer_id=customer_id,
            )
    except ChainError as exc:
        raise _unreachable(exc) from None
    return json_response(json.dumps(report.to_json()))


# Ledger audit ----------------------------------------------------------------------------


@router.get(
    "/v1/audit/ledger",
    tags=["audit"],
    response_model=LedgerAuditPublic,
    responses={200: {"description": "The latest ledger audit"}, **_ERRORS},
    summary="The latest ledger audit report (auditor, admin)",
)
def latest_ledger_audit(runtime: RuntimeDep, key: AuditorKey) -> Response:
    """The most recent run: `running`, `failed` (with the error) or `done` (with the report)."""
    stored = latest_report(runtime.engine)
    if stored is None:
        raise NotFound(
            "no ledger audit has run yet: start one with POST /v1/audit/ledger or "
            "`crm-ledger audit`"
        )
    return json_response(json.dumps(stored.to_json()))


@router.post(
    "/v1/audit/ledger",
    status_code=202,
    tags=["audit"],
    response_model=LedgerAuditPublic,
    responses={202: {"description": "The run, started or already running"}, **_ERRORS},
    summary="Start a ledger audit (auditor, admin)",
)
async def start_ledger_audit(
    request: Request, runtime: RuntimeDep, provider: ChainProviderDep, key: AuditorKey
) -> Response:
    """Start auditing every record and batch against the chain; follow GET /v1/audit/ledger.

    While a run is in progress, its id is returned instead of starting another.
    """
    stored, started = await run_in_threadpool(start_report, runtime.engine)
    if started:
        task = asyncio.create_task(_run_in_background(runtime.engine, provider, stored.id))
        tasks: set[asyncio.Task[None]] = request.app.state.__dict__.setdefault("audit_tasks", set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return json_response(json.dumps(stored.to_json()), 202, {"Location": "/v1/audit/ledger"})


async def _run_in_background(engine: Engine, provider: ChainProvider, report_id: str) -> None:
    try:
        await run_stored_audit(engine=engine, provider=provider, report_id=report_id)
    except Exception:
        # Stored as the run's error; GET /v1/audit/ledger shows it.
        log.exception("ledger audit %s failed", report_id)


# Digests -----------------------------------------------------------------------------------


@router.get(
    "/v1/audit/digest",
    tags=["audit"],
    response_model=DigestPublic,
    responses={200: {"description": 'A "crm-ledger/digest/v1" digest'}, **_ERRORS},
    summary="The ledger's current digest, to save and check later (auditor, admin)",
)
def digest(runtime: RuntimeDep, key: AuditorKey) -> Response:
    """The head after the latest anchored batch, with its batch id, block number and hash.

    Save it; `crm-ledger verify --since DIGEST_FILE` later proves the ledger only grew.
    """
    found = ledger_digest(runtime.engine)
    if found is None:
        raise Conflict("nothing is anchored yet, so the ledger has no digest; try again later")
    return json_response(json.dumps(found.to_json()))


@router.post(
    "/v1/audit/digest/verify",
    tags=["audit"],
    response_model=DigestCheckPublic,
    responses={200: {"description": "Whether the ledger extends the digest"}, **_ERRORS},
    summary="Check that the ledger extends a saved digest (auditor, admin)",
)
async def verify_digest(
    payload: Annotated[dict[str, Any], Body(examples=[DIGEST_EXAMPLE])],
    runtime: RuntimeDep,
    provider: ChainProviderDep,
    key: AuditorKey,
) -> Response:
    """The same proof as `crm-ledger verify --since`, run by the service against its chain."""
    try:
        saved = Digest.from_json(payload)
    except FormatError as exc:
        raise _unprocessable(exc, "digest") from None
    deployment = await run_in_threadpool(read_deployment, runtime.engine)
    address = deployment.address if deployment is not None else saved.chain.contract
    try:
        async with provider.connect() as chain_for:
            check = await verify_since(chain_for(address), saved, address=address)
    except ChainError as exc:
        raise _unreachable(exc) from None
    extends = {
        "extends": check.ok,
        "failures": check.failures,
        "notes": check.notes,
        "batches_added": check.batches_added,
        "records_added": check.records_added,
        "head": "0x" + check.head.hex() if check.head is not None else None,
    }
    return json_response(json.dumps(extends))


# Bundles -----------------------------------------------------------------------------------


@router.get(
    "/v1/audit/export",
    tags=["audit"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": 'A "crm-ledger/bundle/v1" bundle (JSON Lines)',
            "content": {BUNDLE_MEDIA_TYPE: {}},
        },
        **_ERRORS,
    },
    summary="Export a self-contained bundle for the offline verifier (auditor, admin)",
)
def export(
    runtime: RuntimeDep,
    key: AuditorKey,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    from_seq: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    to_seq: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    include_keys: Annotated[
        bool, Query(description="Include customers' keys, so commitments can be checked")
    ] = True,
) -> StreamingResponse:
    """One customer's records, a seq range, or (with neither) the whole anchored ledger.

    `crm-ledger verify BUNDLE --rpc URL` checks it with nothing but the chain.
    """
    if customer_id is not None and (from_seq is not None or to_seq is not None):
        raise Unprocessable(
            "give either customer_id or from_seq/to_seq, not both",
            errors=[{"location": "query", "field": "customer_id", "message": "not with a range"}],
        )
    if customer_id is not None:
        scope = Scope("customer", customer_id=customer_id)
    elif from_seq is not None or to_seq is not None:
        start, stop = from_seq or 0, to_seq if to_seq is not None else 2**63 - 1
        if stop < start:
            raise Unprocessable(
                f"to_seq {stop} is before from_seq {start}",
                errors=[{"location": "query", "field": "to_seq", "message": "before from_seq"}],
            )
        scope = Scope("range", from_seq=start, to_seq=stop)
    else:
        scope = Scope("all")
    # Keys only ever reach auditors and admins: the route's guard has let only them in.
    assert key.role in (Role.AUDITOR, Role.ADMIN)
    bundle = open_export(runtime.engine, scope=scope, include_keys=include_keys)
    name = {"all": "ledger", "customer": f"customer-{customer_id}", "range": "range"}[scope.kind]
    return StreamingResponse(
        bundle.lines(),
        media_type=BUNDLE_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="crm-ledger-{name}.jsonl"'},
    )


# Erasure -----------------------------------------------------------------------------------


@router.delete(
    "/v1/customers/{customer_id}/personal-data",
    tags=["customers"],
    response_model=ErasurePublic,
    responses=_ERRORS,
    summary="Erase a customer's personal data, keeping every proof valid (admin)",
)
def erase_personal_data(customer_id: str, session: SessionDep, key: AdminKey) -> Response:
    """Delete the customer's personal fields, every record's content and the customer's key;
    keep each leaf; write an erasure record. Repeating it changes nothing."""
    for attempt in range(1, ERASURE_ATTEMPTS + 1):
        try:
            with transaction(session):
                result = erase_customer(session=session, customer_id=customer_id)
            break
        except OperationalError as exc:
            # A lock the erasure gave up waiting for (see `erase_customer`), or a deadlock or
            # serialization failure: nothing was written, the erasure can simply run again.
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate not in _RETRYABLE_SQLSTATES or attempt == ERASURE_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    body = ErasurePublic(
        customer_id=result.customer_id,
        erased_at=format_timestamp(result.erased_at),
        erased_records=result.erased_records,
        erasure_record_id=result.erasure_record_id,
        already_erased=result.already_erased,
    )
    return json_response(body)
