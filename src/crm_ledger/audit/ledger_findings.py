"""What the ledger audit (`audit.ledger`) works with: its state per customer, batch and broken
link, and the base of its checks, which pins each finding on the report.

Exports: `Findings`, `CustomerState`, `BatchRange`, `LinkBreak`, `to_hex`, `as_bytes`,
`show`, `kind_name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crm_ledger.audit.report import Discrepancy, DiscrepancyKind, LedgerReport
from crm_ledger.ledger.leaf import RecordKind

__all__ = [
    "BatchRange",
    "CustomerState",
    "Findings",
    "LinkBreak",
    "as_bytes",
    "kind_name",
    "show",
    "to_hex",
]


@dataclass(slots=True)
class CustomerState:
    id: str
    #: `"customer_id":"<id>","id":"` as it appears in the customer's canonical documents.
    document_tail: bytes
    key: bytes | None
    erased: bool
    last_leaf_hash: bytes | None


@dataclass(slots=True)
class BatchRange:
    """The seqs of one batch, the leaves recomputed for them, and the root they must give."""

    batch_id: int
    first_seq: int
    count: int
    expected_root: bytes
    on_chain: bool
    #: On chain but without a row in the database.
    unknown: bool = False
    leaves: list[bytes | None] = field(default_factory=list)
    leaf_findings: int = 0

    @property
    def end(self) -> int:
        return self.first_seq + self.count


@dataclass(frozen=True, slots=True)
class LinkBreak:
    """Record `seq` links to `previous`, which is not the stored leaf of `previous_seq`."""

    previous_seq: int
    seq: int
    previous: bytes
    record_id: str
    customer_id: str


class Findings:
    """The report an audit's checks add their findings to."""

    def __init__(self, report: LedgerReport) -> None:
        self.report = report

    def add(
        self,
        kind: DiscrepancyKind,
        detail: str,
        *,
        seq: int | None = None,
        first_seq: int | None = None,
        last_seq: int | None = None,
        batch_id: int | None = None,
        record_id: str | None = None,
        customer_id: str | None = None,
    ) -> None:
        self.report.add(
            Discrepancy(
                kind,
                detail,
                seq=seq,
                first_seq=first_seq,
                last_seq=last_seq,
                batch_id=batch_id,
                record_id=record_id,
                customer_id=customer_id,
            )
        )


def as_bytes(value: Any) -> bytes:
    """Drivers may hand back memoryview or bytearray for binary columns."""
    return value if isinstance(value, bytes) else bytes(value)


def to_hex(value: object) -> str:
    return "null" if value is None else "0x" + as_bytes(value).hex()


def show(value: object) -> str:
    return to_hex(value) if isinstance(value, bytes | memoryview) else str(value)


def kind_name(kind: int) -> str:
    try:
        return RecordKind(kind).name.lower()
    except ValueError:
        return str(kind)
