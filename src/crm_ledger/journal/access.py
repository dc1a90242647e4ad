"""Who read whom: a customer's access records, newest first, a page at a time.

Exports: `AccessEntry`, `AccessPage`, `access_log`, `access_body`, `DEFAULT_PAGE_SIZE`,
`MAX_PAGE_SIZE`.

An access record is a journal record of kind `access` (`journal.records.record_accesses`),
anchored like every other record and chained into the customer's history. Its body is
`{"key_id", "role", "purpose", "operation"}`: which API key read the customer's personal
fields, in which role, for which declared purpose (the `X-Purpose` header, or null), through
which operation. It holds no personal data; erasure deletes it like every other content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_ledger.db.models import Batch, BatchStatus, Record
from crm_ledger.errors import Unprocessable
from crm_ledger.journal.customers import decode_cursor, encode_cursor, get_customer
from crm_ledger.journal.keys import ApiKeyPrincipal
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.ledger.leaf import RecordKind

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One access record; the body fields are None once the customer was erased."""

    record_id: str
    recorded_at: str
    key_id: str | None
    role: str | None
    purpose: str | None
    operation: str | None
    anchored: bool
    seq: int | None


@dataclass(frozen=True, slots=True)
class AccessPage:
    """A page of access records, newest first, and the cursor of the next (or None)."""

    items: list[AccessEntry]
    next_cursor: str | None


def access_body(
    *, principal: ApiKeyPrincipal, purpose: str | None, operation: str
) -> dict[str, Any]:
    """The body every access record of one read commits to."""
    return {
        "key_id": principal.id,
        "role": principal.role.value,
        "purpose": purpose,
        "operation": operation,
    }


def access_log(
    *,
    session: Session,
    customer_id: str,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> AccessPage:
    """The customer's access records, newest first; raises `NotFound` or `Unprocessable`."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise Unprocessable(
            f"limit must be from 1 to {MAX_PAGE_SIZE}, got {limit}",
            errors=[
                {
                    "location": "query",
                    "field": "limit",
                    "message": f"must be from 1 to {MAX_PAGE_SIZE}",
                }
            ],
        )
    customer = get_customer(session=session, customer_id=customer_id)
    query = (
        select(Record.pk, Record.id, Record.content, Record.created_at, Record.seq, Batch.status)
        .outerjoin(Batch, Batch.id == Record.batch_id)
        .where(Record.customer_pk == customer.pk, Record.kind == int(RecordKind.ACCESS))
        .order_by(Record.pk.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(Record.pk < decode_cursor(cursor))
    rows = session.execute(query).all()
    items = [_entry(row) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].pk) if len(rows) > limit else None
    return AccessPage(items=items, next_cursor=next_cursor)


def _entry(row: Any) -> AccessEntry:
    body: dict[str, Any] = {}
    recorded_at = format_timestamp(row.created_at)
    if row.content is not None:
        document = json.loads(row.content)
        body = document["body"]
        recorded_at = document["recorded_at"]
    return AccessEntry(
        record_id=row.id,
        recorded_at=recorded_at,
        key_id=body.get("key_id"),
        role=body.get("role"),
        purpose=body.get("purpose"),
        operation=body.get("operation"),
        anchored=row.status == BatchStatus.ANCHORED.value,
        seq=row.seq,
    )
