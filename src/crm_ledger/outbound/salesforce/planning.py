"""The Salesforce sync's first two steps, mark and plan (see `outbound.salesforce.sync`):
which customers must be sent, and the next job's exact CSV, committed before anything is sent.

Exports: `JobStage`, `SyncJob`, `mark_all`, `mark_changed`, `plan_job`, `FEED_CURSOR`,
`AUDIT_CURSOR`, `CHUNK`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import (
    AuditReport,
    Customer,
    FeedEvent,
    FeedMark,
    SalesforceContact,
    SalesforceCursor,
    SalesforceJob,
    utcnow,
)
from crm_ledger.outbound.salesforce.contacts import (
    FIELDS,
    LAST_NAME_FIELD,
    contact_csv,
    contact_values,
    placeholder_last_name,
)

__all__ = [
    "AUDIT_CURSOR",
    "CHUNK",
    "FEED_CURSOR",
    "JobStage",
    "SyncJob",
    "mark_all",
    "mark_changed",
    "plan_job",
]

log = logging.getLogger(__name__)

FEED_CURSOR = "feed"
AUDIT_CURSOR = "audit"
#: The feed mark below which events were pruned (`crm_ledger.feed`).
_PRUNED_THROUGH = "pruned_through"
#: Customers read or written per statement.
CHUNK = 1000


class JobStage(enum.StrEnum):
    """Where a `salesforce_jobs` row stands."""

    PLANNED = "planned"
    OPEN = "open"
    UPLOADED = "uploaded"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SyncJob:
    """A `salesforce_jobs` row in flight: its stage, Salesforce id, CSV and row digests."""

    pk: int
    job_id: str | None
    stage: JobStage
    payload: str
    rows: dict[str, str]


# Mark ------------------------------------------------------------------------------------------


def mark_all(session_factory: sessionmaker[Session], *, resend: bool = False) -> int:
    """Mark every customer dirty; how many there are.

    `resend` forgets what Salesforce last accepted, so every Contact is sent again (to repair
    Contacts edited by hand in Salesforce).
    """
    with session_factory.begin() as session:
        if resend:
            session.execute(update(SalesforceContact).values(synced_hash=None))
        return _mark_everyone(session)


def mark_changed(session_factory: sessionmaker[Session], *, limit: int = CHUNK) -> int:
    """Mark the customers that up to `limit` new feed events name (or everyone); events read."""
    with session_factory.begin() as session:
        position = _cursor(session, FEED_CURSOR)
        pruned = session.scalar(select(FeedMark.position).where(FeedMark.name == _PRUNED_THROUGH))
        audit = session.scalar(
            select(func.max(AuditReport.pk)).where(AuditReport.status.in_(["done", "failed"]))
        )
        audit_seen = _cursor(session, AUDIT_CURSOR)
        if position is None or audit_seen != (audit or 0) or position < int(pruned or 0):
            # First run, a new audit, or events missed: everyone may have changed.
            newest = session.scalar(select(func.max(FeedEvent.pk)))
            marked = _mark_everyone(session)
            _set_cursor(session, FEED_CURSOR, max(int(newest or 0), int(pruned or 0)))
            _set_cursor(session, AUDIT_CURSOR, int(audit or 0))
            log.info("salesforce sync marked every customer (%d) to compare", marked)
            return max(marked, 1)
        events = session.execute(
            select(FeedEvent.pk, FeedEvent.customer_id)
            .where(FeedEvent.pk > position)
            .order_by(FeedEvent.pk)
            .limit(limit)
        ).all()
        if not events:
            return 0
        ids = sorted({row.customer_id for row in events if row.customer_id is not None})
        pks = list(session.scalars(select(Customer.pk).where(Customer.id.in_(ids)))) if ids else []
        _mark(session, pks)
        _set_cursor(session, FEED_CURSOR, int(events[-1].pk))
        return len(events)


def _mark_everyone(session: Session) -> int:
    session.execute(update(SalesforceContact).values(dirty=True))
    known = exists().where(SalesforceContact.customer_pk == Customer.pk)
    session.execute(
        insert(SalesforceContact).from_select(
            ["customer_pk", "dirty", "needs_create"],
            select(Customer.pk, literal(True), literal(False)).where(~known),
        )
    )
    return int(session.scalar(select(func.count()).select_from(SalesforceContact)) or 0)


def _mark(session: Session, customer_pks: Sequence[int]) -> None:
    for start in range(0, len(customer_pks), CHUNK):
        chunk = customer_pks[start : start + CHUNK]
        known = set(
            session.scalars(
                select(SalesforceContact.customer_pk).where(
                    SalesforceContact.customer_pk.in_(chunk)
                )
            )
        )
        if known:
            session.execute(
                update(SalesforceContact)
                .where(SalesforceContact.customer_pk.in_(known))
                .values(dirty=True)
            )
        new = [pk for pk in chunk if pk not in known]
        if new:
            session.execute(
                insert(SalesforceContact),
                [{"customer_pk": pk, "dirty": True, "needs_create": False} for pk in new],
            )


def _cursor(session: Session, name: str) -> int | None:
    value = session.scalar(select(SalesforceCursor.position).where(SalesforceCursor.name == name))
    return int(value) if value is not None else None


def _set_cursor(session: Session, name: str, position: int) -> None:
    row = session.get(SalesforceCursor, name)
    if row is None:
        session.add(SalesforceCursor(name=name, position=position, updated_at=utcnow()))
    else:
        row.position = position
        row.updated_at = utcnow()


# Plan ------------------------------------------------------------------------------------------


def plan_job(
    session_factory: sessionmaker[Session],
    *,
    object_name: str,
    max_bytes: int,
    max_records: int,
) -> tuple[SyncJob | None, int]:
    """Plan the next job from dirty customers: (the job or None, customers found unchanged)."""
    header = len(",".join(FIELDS)) + 1
    with session_factory.begin() as session:
        chosen: list[Any] = []
        create: set[str] = set()
        digests: dict[str, str] = {}
        unchanged: list[int] = []
        # The CSV's exact size: rows without a LastName column, plus the column when any row
        # creates a Contact (",LastName" in the header, one cell per row, the names).
        rows_size = 0
        names_size = 0
        after = -1
        full = False
        while not full and len(chosen) < max_records:
            dirty = _dirty_after(session, after)
            if not dirty:
                break
            after = dirty[-1][0]
            for pk, state, values in dirty:
                digest = values.digest()
                if digest == state.synced_hash and not state.needs_create:
                    unchanged.append(pk)
                    continue
                row_size = len(contact_csv([values])) - header
                name_size = (
                    len(placeholder_last_name(values.customer_id)) if state.needs_create else 0
                )
                creates = bool(create) or state.needs_create
                size = header + rows_size + row_size
                if creates:
                    size += len(LAST_NAME_FIELD) + 1 + len(chosen) + 1 + names_size + name_size
                if size > max_bytes or len(chosen) >= max_records:
                    full = True
                    break
                rows_size += row_size
                names_size += name_size
                chosen.append((pk, values))
                digests[values.customer_id] = digest.hex()
                if state.needs_create:
                    create.add(values.customer_id)
        _clean(session, unchanged + [pk for pk, _ in chosen])
        if not chosen:
            return None, len(unchanged)
        payload = contact_csv([values for _, values in chosen], create=frozenset(create))
        assert len(payload.encode()) <= max_bytes, "the size estimate is exact"
        job = SalesforceJob(
            object=object_name,
            state=JobStage.PLANNED.value,
            payload=payload,
            rows=digests,
            records=len(chosen),
        )
        session.add(job)
        session.flush()
        return SyncJob(job.pk, None, JobStage.PLANNED, payload, digests), len(unchanged)


def _dirty_after(session: Session, after: int) -> list[tuple[int, Any, Any]]:
    """The next `CHUNK` dirty customers after pk `after`: (pk, sync state, Contact values)."""
    states = session.execute(
        select(
            SalesforceContact.customer_pk,
            SalesforceContact.synced_hash,
            SalesforceContact.needs_create,
        )
        .where(SalesforceContact.dirty.is_(True), SalesforceContact.customer_pk > after)
        .order_by(SalesforceContact.customer_pk)
        .limit(CHUNK)
    ).all()
    by_pk = {int(row.customer_pk): row for row in states}
    if not by_pk:
        return []
    values_by_id = {v.customer_id: v for v in contact_values(session, list(by_pk))}
    ids_by_pk = dict(
        session.execute(select(Customer.pk, Customer.id).where(Customer.pk.in_(list(by_pk))))
        .tuples()
        .all()
    )
    return [(pk, state, values_by_id[ids_by_pk[pk]]) for pk, state in by_pk.items()]


def _clean(session: Session, customer_pks: Sequence[int]) -> None:
    for start in range(0, len(customer_pks), CHUNK):
        session.execute(
            update(SalesforceContact)
            .where(SalesforceContact.customer_pk.in_(customer_pks[start : start + CHUNK]))
            .values(dirty=False)
        )
