"""What a reconciliation finds (drift items, a run's result) and how runs are stored and
requested (`reconciliation_reports`). The runs themselves are `indexer.reconcile`'s.

Exports: `DriftKind`, `DriftItem`, `ReconciliationResult`, `EVIDENCE`, `request_run`,
`latest_report`, `TRIGGER_API`, `TRIGGER_SCHEDULE`, `REQUESTED`, `RUNNING`, `DONE`, `FAILED`,
`STALE_AFTER`, `MAX_LISTED_ITEMS`.
"""

from __future__ import annotations

import enum
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import ReconciliationReport, new_id, utcnow

TRIGGER_API = "api"
TRIGGER_SCHEDULE = "schedule"
REQUESTED, RUNNING, DONE, FAILED = "requested", "running", "done", "failed"
#: A run still `running` after this long died with its process and no longer blocks new ones.
STALE_AFTER = timedelta(hours=1)
#: Items listed in a stored report (all are counted).
MAX_LISTED_ITEMS = 1000


class DriftKind(enum.StrEnum):
    """Each way the database and the chain can disagree; see the module docstring."""

    BATCH_ROOT_DIFFERS = "batch_root_differs"
    BATCH_UNKNOWN_TO_DATABASE = "batch_unknown_to_database"
    BATCH_MISSING_ON_CHAIN = "batch_missing_on_chain"
    ISSUANCE_MISSING_ON_CHAIN = "issuance_missing_on_chain"
    BALANCE_DIFFERS = "balance_differs"


#: Kinds that are evidence and are never repaired.
EVIDENCE = frozenset({DriftKind.BATCH_ROOT_DIFFERS, DriftKind.BATCH_UNKNOWN_TO_DATABASE})


@dataclass
class DriftItem:
    """One disagreement: its kind, what it is about, and what was done."""

    kind: DriftKind
    subject: dict[str, Any]
    detail: str
    repaired: bool = False
    repair: str | None = None

    @property
    def key(self) -> str:
        """Identity across runs: kind and subject."""
        return f"{self.kind.value}:{json.dumps(self.subject, sort_keys=True)}"

    @property
    def evidence(self) -> bool:
        """True for kinds that are never repaired (possible tampering)."""
        return self.kind in EVIDENCE

    def to_json(self) -> dict[str, Any]:
        """JSON form, as reports store and the API shows it."""
        return {
            "kind": self.kind.value,
            "subject": self.subject,
            "detail": self.detail,
            "evidence_of_tampering": self.evidence,
            "repaired": self.repaired,
            "repair": self.repair,
        }


@dataclass
class ReconciliationResult:
    """The outcome of one run."""

    items: list[DriftItem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    chain: dict[str, Any] = field(default_factory=dict)

    @property
    def drift_count(self) -> int:
        """Items found."""
        return len(self.items)

    @property
    def repaired_count(self) -> int:
        """Items repaired."""
        return sum(1 for item in self.items if item.repaired)

    def to_json(self) -> dict[str, Any]:
        """JSON form, stored in `reconciliation_reports.report`."""
        counts: dict[str, int] = defaultdict(int)
        for item in self.items:
            counts[item.kind.value] += 1
        return {
            "clean": not self.items,
            "drift_count": self.drift_count,
            "repaired_count": self.repaired_count,
            "by_kind": dict(sorted(counts.items())),
            "checked": self.checked,
            "chain": self.chain,
            "items_listed": min(len(self.items), MAX_LISTED_ITEMS),
            "items": [item.to_json() for item in self.items[:MAX_LISTED_ITEMS]],
        }


def request_run(session_factory: sessionmaker[Session]) -> tuple[dict[str, Any], bool]:
    """A `requested` run for the indexer's process, or the run already requested or running.

    True when this call made the request.
    """
    with session_factory.begin() as session:
        pending = session.scalar(
            select(ReconciliationReport.id)
            .where(
                or_(
                    ReconciliationReport.status == REQUESTED,
                    and_(
                        ReconciliationReport.status == RUNNING,
                        ReconciliationReport.started_at > utcnow() - STALE_AFTER,
                    ),
                )
            )
            .order_by(ReconciliationReport.pk.desc())
            .limit(1)
        )
        made = pending is None
        if pending is None:
            pending = new_id()
            session.execute(
                insert(ReconciliationReport).values(
                    id=pending,
                    status=REQUESTED,
                    trigger=TRIGGER_API,
                    requested_at=utcnow(),
                    drift_count=0,
                    repaired_count=0,
                )
            )
    requested = latest_report(session_factory, report_id=pending)
    assert requested is not None
    return requested, made


def latest_report(
    session_factory: sessionmaker[Session], *, report_id: str | None = None
) -> dict[str, Any] | None:
    """A stored run as JSON: `report_id`, or the latest run; None when there is none."""
    with session_factory() as session:
        query = select(ReconciliationReport)
        if report_id is not None:
            query = query.where(ReconciliationReport.id == report_id)
        row = session.scalars(query.order_by(ReconciliationReport.pk.desc()).limit(1)).first()
        if row is None:
            return None
        return {
            "id": row.id,
            "status": row.status,
            "trigger": row.trigger,
            "requested_at": _iso(row.requested_at),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
            "drift_count": row.drift_count,
            "repaired_count": row.repaired_count,
            "error": row.error,
            "report": json.loads(row.report) if row.report else None,
        }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
