"""Ledger audit runs, stored: start one, record its outcome, show the latest.

Exports: `StoredReport`, `start_report`, `finish_report`, `fail_report`, `latest_report`,
`run_stored_audit`, `STALE_AFTER`.

`crm-ledger audit` and `POST /v1/audit/ledger` both store their runs in `audit_reports`, so
`GET /v1/audit/ledger` shows the latest whichever way it ran. One run at a time: starting while
one runs returns that one. A run whose process died stays `running`; after `STALE_AFTER` it no
longer blocks a new one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update

from crm_ledger.audit.chain import ChainProvider
from crm_ledger.audit.ledger import Progress, audit_journal, read_chain, read_deployment
from crm_ledger.audit.report import LedgerReport
from crm_ledger.db.models import AuditReport, new_id, utcnow

STALE_AFTER = timedelta(hours=1)
RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A stored run: its state and, once done, the report."""

    id: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    clean: bool | None
    records_checked: int
    discrepancy_count: int
    report: dict[str, Any] | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The answer of `GET /v1/audit/ledger`."""
        return {
            "id": self.id,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "clean": self.clean,
            "records_checked": self.records_checked,
            "discrepancy_count": self.discrepancy_count,
            "error": self.error,
            "report": self.report,
        }


def start_report(engine: Engine, *, force: bool = False) -> tuple[StoredReport, bool]:
    """A new running report, or the one already running (unless `force`); True when this call
    started it."""
    with engine.begin() as conn:
        running = None
        if not force:
            running = conn.execute(
                select(AuditReport.id)
                .where(
                    AuditReport.status == RUNNING, AuditReport.started_at > utcnow() - STALE_AFTER
                )
                .order_by(AuditReport.pk.desc())
                .limit(1)
            ).scalar()
        if running is None:
            running = new_id()
            conn.execute(
                insert(AuditReport).values(
                    id=running,
                    status=RUNNING,
                    started_at=utcnow(),
                    records_checked=0,
                    discrepancy_count=0,
                )
            )
            started = True
        else:
            started = False
    found = _get(engine, running)
    assert found is not None
    return found, started


def finish_report(engine: Engine, report_id: str, report: LedgerReport) -> None:
    """Store a finished run's findings."""
    with engine.begin() as conn:
        conn.execute(
            update(AuditReport)
            .where(AuditReport.id == report_id)
            .values(
                status=DONE,
                finished_at=utcnow(),
                clean=report.clean,
                records_checked=report.records_checked,
                discrepancy_count=report.discrepancy_count,
                report=json.dumps(report.to_json()),
            )
        )


def fail_report(engine: Engine, report_id: str, error: str) -> None:
    """Store why a run could not finish."""
    with engine.begin() as conn:
        conn.execute(
            update(AuditReport)
            .where(AuditReport.id == report_id)
            .values(status=FAILED, finished_at=utcnow(), error=error)
        )


def latest_report(engine: Engine) -> StoredReport | None:
    """The most recently started run, or None before the first."""
    with engine.connect() as conn:
        latest = conn.execute(
            select(AuditReport.id).order_by(AuditReport.pk.desc()).limit(1)
        ).scalar()
    return _get(engine, latest) if latest is not None else None


def _get(engine: Engine, report_id: str) -> StoredReport | None:
    with engine.connect() as conn:
        row = conn.execute(select(AuditReport).where(AuditReport.id == report_id)).first()
    if row is None:
        return None
    return StoredReport(
        id=row.id,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        clean=row.clean,
        records_checked=int(row.records_checked),
        discrepancy_count=int(row.discrepancy_count),
        report=json.loads(row.report) if row.report else None,
        error=row.error,
    )


async def run_stored_audit(
    *,
    engine: Engine,
    provider: ChainProvider,
    report_id: str,
    progress: Progress | None = None,
) -> LedgerReport:
    """Run the ledger audit for the stored run `report_id` and store its outcome.

    The chain connection is held only while the chain is read. Any error is stored as the
    run's failure and raised again.
    """
    try:
        deployment = await asyncio.to_thread(read_deployment, engine)
        async with provider.connect() as chain_for:
            chain = chain_for(deployment.address) if deployment is not None else None
            view = await read_chain(chain, deployment)
        report = await asyncio.to_thread(audit_journal, engine, view, progress=progress)
    except BaseException as exc:
        await asyncio.to_thread(fail_report, engine, report_id, str(exc) or type(exc).__name__)
        raise
    await asyncio.to_thread(finish_report, engine, report_id, report)
    return report


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
