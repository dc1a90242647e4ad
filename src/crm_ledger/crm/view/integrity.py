"""A customer's integrity as the latest finished ledger audit found it: clean, discrepancies
touching their records (with the findings), unknown, failed or never audited.

Exports: `customer_integrity`.

A finished report's findings are parsed once per process (the latest one only): every 360 view
reads them, and a report does not change once finished.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_ledger.crm.schemas import IntegrityStatus
from crm_ledger.db.models import AuditReport, Customer, Record
from crm_ledger.journal.schemas import format_timestamp

__all__ = ["customer_integrity"]

_report_cache: dict[str, list[dict[str, Any]]] = {}
_report_cache_lock = threading.Lock()


def _findings(report_id: str, report: str | None) -> list[dict[str, Any]]:
    """The listed discrepancies of a finished report, parsed once per process."""
    with _report_cache_lock:
        cached = _report_cache.get(report_id)
    if cached is not None:
        return cached
    parsed = json.loads(report).get("discrepancies", []) if report else []
    with _report_cache_lock:
        _report_cache.clear()
        _report_cache[report_id] = parsed
    return parsed


def customer_integrity(*, session: Session, customer: Customer) -> IntegrityStatus:
    """The customer's integrity as the latest finished ledger audit found it."""
    finished = session.scalars(
        select(AuditReport)
        .where(AuditReport.status.in_(["done", "failed"]))
        .order_by(AuditReport.pk.desc())
        .limit(1)
    ).first()
    running = (
        session.scalar(
            select(AuditReport.pk)
            .where(
                AuditReport.status == "running",
                AuditReport.pk > (finished.pk if finished is not None else 0),
            )
            .limit(1)
        )
        is not None
    )
    if finished is None:
        return IntegrityStatus(
            status="never_audited",
            audit_running=running,
            detail="no ledger audit has finished yet (POST /v1/audit/ledger runs one)",
        )
    common: dict[str, Any] = {
        "report_id": finished.id,
        "finished_at": format_timestamp(finished.finished_at) if finished.finished_at else None,
        "audit_running": running,
    }
    if finished.status == "failed":
        return IntegrityStatus(
            status="failed",
            detail=f"the latest ledger audit could not finish: {finished.error}",
            **common,
        )
    common |= {
        "ledger_clean": bool(finished.clean),
        "ledger_discrepancy_count": int(finished.discrepancy_count),
    }
    if finished.clean:
        return IntegrityStatus(
            status="clean", detail="the latest ledger audit found nothing", **common
        )
    findings = _findings(finished.id, finished.report)
    records = session.execute(
        select(Record.id, Record.seq, Record.batch_id).where(Record.customer_pk == customer.pk)
    ).all()
    record_ids = {row.id for row in records}
    seqs = {int(row.seq) for row in records if row.seq is not None}
    batch_ids = {int(row.batch_id) for row in records if row.batch_id is not None}
    touching = [f for f in findings if _touches(f, customer.id, record_ids, seqs, batch_ids)]
    if touching:
        return IntegrityStatus(
            status="discrepancies",
            discrepancies=touching[:100],
            detail=f"the latest ledger audit found {len(touching)} discrepancies touching this "
            "customer's records",
            **common,
        )
    if len(findings) < int(finished.discrepancy_count):
        return IntegrityStatus(
            status="unknown",
            detail="the latest ledger audit found more discrepancies than its report lists; "
            "none of those listed touch this customer",
            **common,
        )
    return IntegrityStatus(
        status="clean",
        detail="the latest ledger audit found discrepancies, none touching this customer",
        **common,
    )


def _touches(
    finding: dict[str, Any],
    customer_id: str,
    record_ids: set[str],
    seqs: set[int],
    batch_ids: set[int],
) -> bool:
    if finding.get("customer_id") == customer_id or finding.get("record_id") in record_ids:
        return True
    seq = finding.get("seq")
    if isinstance(seq, int) and seq in seqs:
        return True
    first, last = finding.get("first_seq"), finding.get("last_seq")
    if isinstance(first, int) and isinstance(last, int):
        if last - first < len(seqs):
            return any(s in seqs for s in range(first, last + 1))
        return any(first <= s <= last for s in seqs)
    batch_id = finding.get("batch_id")
    return isinstance(batch_id, int) and batch_id in batch_ids
