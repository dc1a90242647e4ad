"""How journal objects become the API's public JSON shapes.

Exports: `customer_public`, `record_public`, `record_public_json`, `records_public_json`,
`receipt_url`, `AccessEntryPublic`, `AccessLogPublic`, `access_log_public`. The record and
customer shapes are in `crm_ledger.schemas` (pydantic only, shared with the client library);
request shapes live in `crm_ledger.journal.schemas`: they are what the ledger commits to.
"""

from __future__ import annotations

import json
from typing import Literal

import pydantic_core
from pydantic import BaseModel

from crm_ledger.db.models import Customer
from crm_ledger.journal.access import AccessPage
from crm_ledger.journal.customers import public_fields
from crm_ledger.journal.privacy import PersonalFields
from crm_ledger.journal.records import RecordView, kind_name
from crm_ledger.schemas import CustomerPublic, RecordPublic


def receipt_url(record_id: str) -> str:
    """Where a record's receipt is served."""
    return f"/v1/records/{record_id}/receipt"


def customer_public(customer: Customer, personal: PersonalFields | None) -> CustomerPublic:
    """The public form of a customer row; `personal` None gives the pseudonymous form."""
    return CustomerPublic(**public_fields(customer, personal))


def record_public(record: RecordView) -> RecordPublic:
    """The public form of a record."""
    return RecordPublic.model_construct(
        id=record.id,
        customer_id=record.customer_id,
        kind=kind_name(record.kind),
        content=record.body,
        document=record.document,
        recorded_at=record.recorded_at,
        commitment="0x" + record.commitment.hex(),
        status="anchored" if record.anchored else "pending",
        seq=record.seq,
        batch_id=record.batch_id,
        receipt_url=receipt_url(record.id),
    )


def record_public_json(record: RecordView) -> str:
    """`record_public(record)` as JSON text, the answer of a write: the same value as its
    `model_dump_json()` (tests/api/test_batch_answer.py compares them), put together from the
    texts the write already made (the body's canonical JSON, so `content` comes in canonical
    key order) rather than by a model: for a batch of 1,000 records a model per record cost
    more than the database write, and a dict per record through pydantic-core's encoder was
    still 14 % of the group committer's time (docs/benchmarks.md, session 16)."""
    content = record.body_json
    if content is None:
        content = "null" if record.body is None else pydantic_core.to_json(record.body).decode()
    document = "null" if record.document is None else _json_string(record.document)
    status = '"anchored"' if record.anchored else '"pending"'
    seq = "null" if record.seq is None else str(record.seq)
    batch_id = "null" if record.batch_id is None else str(record.batch_id)
    customer_id = _json_string(record.customer_id)
    # The record id is a UUID, the kind a name, the timestamp RFC 3339: nothing to escape.
    return (
        f'{{"id":"{record.id}","customer_id":{customer_id},'
        f'"kind":"{kind_name(record.kind)}","content":{content},"document":{document},'
        f'"recorded_at":"{record.recorded_at}","commitment":"0x{record.commitment.hex()}",'
        f'"status":{status},"seq":{seq},"batch_id":{batch_id},'
        f'"receipt_url":"{receipt_url(record.id)}"}}'
    )


def records_public_json(records: list[RecordView]) -> str:
    """`RecordsPublic` of `records` as JSON text, the answer of a batch write (the same value
    as `RecordsPublic(items=[record_public(r) ...]).model_dump_json()`)."""
    return '{"items":[' + ",".join(map(record_public_json, records)) + "]}"


#: A JSON string of any text, escaped as the standard library escapes it (UTF-8 kept).
_json_string = json.JSONEncoder(ensure_ascii=False).encode


class AccessEntryPublic(BaseModel):
    """One read of the customer's personal data (fields null once the customer was erased)."""

    record_id: str
    recorded_at: str
    key_id: str | None
    role: str | None
    purpose: str | None
    operation: str | None
    status: Literal["pending", "anchored"]
    seq: int | None
    receipt_url: str


class AccessLogPublic(BaseModel):
    """A page of the customer's access records, newest first (`next_cursor` null: no more)."""

    items: list[AccessEntryPublic]
    next_cursor: str | None


def access_log_public(page: AccessPage) -> AccessLogPublic:
    """The public form of a page of access records."""
    return AccessLogPublic(
        items=[
            AccessEntryPublic(
                record_id=entry.record_id,
                recorded_at=entry.recorded_at,
                key_id=entry.key_id,
                role=entry.role,
                purpose=entry.purpose,
                operation=entry.operation,
                status="anchored" if entry.anchored else "pending",
                seq=entry.seq,
                receipt_url=receipt_url(entry.record_id),
            )
            for entry in page.items
        ],
        next_cursor=page.next_cursor,
    )
