"""What a ledger audit finds: discrepancies, each tied to a seq, a seq range, a batch or a customer.

Exports: `DiscrepancyKind`, `Discrepancy`, `LedgerReport`, `MAX_LISTED_DISCREPANCIES`.

Pure data with a JSON form; the audit itself is `crm_ledger.audit.ledger`. A report names every
record it can pin a problem on (`seq`, or `first_seq`..`last_seq` for a whole batch), so
`affected_seqs()` is exactly the set of records the audit accuses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

#: A report lists at most this many discrepancies (all are counted): a swapped key on a customer
#: with a million records should not make a report of a million lines.
MAX_LISTED_DISCREPANCIES = 10_000


class DiscrepancyKind(enum.StrEnum):
    """Every way the journal and the chain can disagree, named for what an operator sees."""

    #: The AuditLedger deployment is gone from the chain (reset, or another chain at the URL).
    CHAIN_RESET = "chain_reset"
    #: The chain's own data does not add up (heads, contiguity, counts): not our AuditLedger.
    CHAIN_INCONSISTENT = "chain_inconsistent"
    #: The chain holds a batch the database has no row for.
    UNKNOWN_BATCH = "unknown_batch"
    #: A batch row differs from the batch on chain (root, range, heads).
    BATCH_ROW_ALTERED = "batch_row_altered"
    #: A batch row marked anchored whose batch is not on chain (rolled back, or an inserted row).
    BATCH_NOT_ON_CHAIN = "batch_not_on_chain"
    #: The recorded transaction or block of a batch is not where the chain has it.
    BATCH_LOCATION = "batch_location"
    #: A batch's leaves do not hash to its root and no single record explains it.
    BATCH_ROOT_MISMATCH = "batch_root_mismatch"
    #: A seq inside an anchored batch has no record: the record was deleted.
    DELETED_RECORD = "deleted_record"
    #: A record whose seq lies outside every batch: it was inserted.
    INSERTED_RECORD = "inserted_record"
    #: A record's `batch_id` is not the batch its seq belongs to.
    RECORD_BATCH_MISMATCH = "record_batch_mismatch"
    #: HMAC(key, content) is not the stored commitment: content or customer key altered.
    COMMITMENT_MISMATCH = "commitment_mismatch"
    #: The committed document names another record, customer or kind than the row.
    DOCUMENT_MISMATCH = "document_mismatch"
    #: A record of a customer who was not erased has no content.
    CONTENT_MISSING = "content_missing"
    #: A customer who was not erased has no key.
    KEY_MISSING = "key_missing"
    #: An erased customer's record still holds content.
    ERASED_CONTENT_PRESENT = "erased_content_present"
    #: The stored leaf hash is not the hash of the stored leaf input fields.
    LEAF_MISMATCH = "leaf_mismatch"
    #: The record was rewritten consistently (content, commitment, leaf): its leaf is not the
    #: anchored one, which the next link of its customer's chain still names.
    LEAF_REWRITTEN = "leaf_rewritten"
    #: A record's previous leaf hash is not its customer's previous record's leaf.
    CHAIN_LINK_BROKEN = "chain_link_broken"
    #: A customer's `last_leaf_hash` is not the leaf of their last record.
    CUSTOMER_TAIL_MISMATCH = "customer_tail_mismatch"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One finding; the location fields that do not apply are None."""

    kind: DiscrepancyKind
    detail: str
    seq: int | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    batch_id: int | None = None
    record_id: str | None = None
    customer_id: str | None = None

    def seqs(self) -> range:
        """The seqs this finding accuses (empty for batch-row, chain and customer findings)."""
        if self.seq is not None:
            return range(self.seq, self.seq + 1)
        if self.first_seq is not None and self.last_seq is not None:
            return range(self.first_seq, self.last_seq + 1)
        return range(0)

    def to_json(self) -> dict[str, Any]:
        """JSON form, without the location fields that are None."""
        out: dict[str, Any] = {"kind": self.kind.value, "detail": self.detail}
        for name in ("seq", "first_seq", "last_seq", "batch_id", "record_id", "customer_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Discrepancy:
        """Inverse of `to_json` (for stored reports)."""
        return cls(
            kind=DiscrepancyKind(obj["kind"]),
            detail=obj["detail"],
            seq=obj.get("seq"),
            first_seq=obj.get("first_seq"),
            last_seq=obj.get("last_seq"),
            batch_id=obj.get("batch_id"),
            record_id=obj.get("record_id"),
            customer_id=obj.get("customer_id"),
        )


@dataclass
class LedgerReport:
    """The outcome of one ledger audit."""

    started_at: str
    finished_at: str | None = None
    records_checked: int = 0
    erased_records: int = 0
    pending_records: int = 0
    batches_checked: int = 0
    chain: dict[str, Any] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    discrepancy_count: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """True when nothing was found."""
        return self.discrepancy_count == 0

    def add(self, discrepancy: Discrepancy) -> None:
        """Count a finding, and list it while under `MAX_LISTED_DISCREPANCIES`."""
        self.discrepancy_count += 1
        if len(self.discrepancies) < MAX_LISTED_DISCREPANCIES:
            self.discrepancies.append(discrepancy)

    def affected_seqs(self) -> set[int]:
        """Every seq some listed finding accuses."""
        out: set[int] = set()
        for discrepancy in self.discrepancies:
            out.update(discrepancy.seqs())
        return out

    def kinds(self) -> set[DiscrepancyKind]:
        """The kinds of the listed findings."""
        return {d.kind for d in self.discrepancies}

    def to_json(self) -> dict[str, Any]:
        """JSON form, as `GET /v1/audit/ledger` and `crm-ledger audit --json` show it."""
        return {
            "clean": self.clean,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": round(self.seconds, 3),
            "records_checked": self.records_checked,
            "erased_records": self.erased_records,
            "pending_records": self.pending_records,
            "batches_checked": self.batches_checked,
            "chain": self.chain,
            "discrepancy_count": self.discrepancy_count,
            "discrepancies_listed": len(self.discrepancies),
            "discrepancies": [d.to_json() for d in self.discrepancies],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LedgerReport:
        """Inverse of `to_json` (for stored reports)."""
        return cls(
            started_at=obj["started_at"],
            finished_at=obj.get("finished_at"),
            records_checked=obj.get("records_checked", 0),
            erased_records=obj.get("erased_records", 0),
            pending_records=obj.get("pending_records", 0),
            batches_checked=obj.get("batches_checked", 0),
            chain=obj.get("chain", {}),
            discrepancies=[Discrepancy.from_json(d) for d in obj.get("discrepancies", [])],
            discrepancy_count=obj.get("discrepancy_count", 0),
            seconds=obj.get("seconds", 0.0),
        )
