"""The ledger audit's checks of the chain's own data and of the batch rows against the chain
(`audit.ledger` runs them before the records).

Exports: `BatchChecks`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from crm_ledger.audit.ledger_chain import ChainView
from crm_ledger.audit.ledger_findings import BatchRange, Findings, as_bytes, show, to_hex
from crm_ledger.audit.report import DiscrepancyKind, LedgerReport
from crm_ledger.audit.snapshot import STORED_BATCHES
from crm_ledger.db.models import BatchStatus
from crm_ledger.ledger import merkle
from crm_ledger.verifier.chain import BatchAnchoredEvent

__all__ = ["BatchChecks"]


class BatchChecks(Findings):
    """Checks of the chain view and the batch rows; fills `ranges` (every batch, by first seq)."""

    def __init__(self, conn: Connection, view: ChainView, report: LedgerReport) -> None:
        super().__init__(report)
        self.conn = conn
        self.view = view
        self.ranges: list[BatchRange] = []
        self.starts: list[int] = []

    # Chain and batch rows --------------------------------------------------------------

    def _check_chain(self) -> None:
        view = self.view
        if view.reset is not None:
            self.add(
                DiscrepancyKind.CHAIN_RESET,
                f"{view.reset}. No batch can be checked against the chain; the journal is "
                "checked against its own batch rows. Run `crm-ledger chain recover` to open a "
                "new ledger epoch and re-anchor the journal.",
            )
        for problem in view.problems:
            self.add(DiscrepancyKind.CHAIN_INCONSISTENT, problem)

    def _check_batches(self) -> None:
        rows = {row.id: row for row in self.conn.execute(STORED_BATCHES)}
        chain_ids = set()
        previous_head = merkle.ZERO_HASH
        for batch in self.view.batches:
            chain_ids.add(batch.batch_id)
            last = batch.first_seq + batch.count - 1
            row = rows.get(batch.batch_id)
            if row is None:
                self.add(
                    DiscrepancyKind.UNKNOWN_BATCH,
                    f"batch {batch.batch_id} (seqs {batch.first_seq} to {last}) is on chain "
                    f"(transaction 0x{batch.tx_hash.hex()}) but the database has no row for it",
                    batch_id=batch.batch_id,
                    first_seq=batch.first_seq,
                    last_seq=last,
                )
            else:
                self._compare_row(row, batch, previous_head)
            previous_head = batch.head
            self.ranges.append(
                BatchRange(
                    batch_id=batch.batch_id,
                    first_seq=batch.first_seq,
                    count=batch.count,
                    expected_root=batch.root,
                    on_chain=True,
                    unknown=row is None,
                )
            )
        self._check_rows_off_chain(rows, chain_ids, previous_head)
        self.ranges.sort(key=lambda r: r.first_seq)
        self.starts = [r.first_seq for r in self.ranges]
        self.report.batches_checked = len(self.ranges)

    def _check_rows_off_chain(
        self, rows: dict[int, Any], chain_ids: set[int], previous_head: bytes
    ) -> None:
        """The batch rows the chain does not have: anchored ones are reported, and each must
        start past the chain's batches and continue the head chain from the last one."""
        chain_end = self.ranges[-1].end if self.ranges else 0
        for batch_id, row in rows.items():
            if batch_id in chain_ids:
                continue
            first, count = int(row.first_seq), int(row.size)
            span = f"seqs {first} to {first + count - 1}"
            if (
                row.status == BatchStatus.ANCHORED.value
                and self.view.reset is None
                and not self._anchored_since_read(batch_id, row)
            ):
                self.add(
                    DiscrepancyKind.BATCH_NOT_ON_CHAIN,
                    f"batch {batch_id} ({span}) is marked anchored in transaction "
                    f"{to_hex(row.tx_hash)}, but the chain has no such batch: the chain rolled "
                    "back (the anchorer re-anchors it) or the row was inserted",
                    batch_id=batch_id,
                )
            if first < chain_end:
                self.add(
                    DiscrepancyKind.BATCH_ROW_ALTERED,
                    f"batch row {batch_id} claims {span}, which the chain anchored in other "
                    "batches",
                    batch_id=batch_id,
                )
                continue
            expected_head = merkle.next_head(previous_head, bytes(row.root), first, count)
            if bytes(row.previous_head) != previous_head or bytes(row.head) != expected_head:
                self.add(
                    DiscrepancyKind.BATCH_ROW_ALTERED,
                    f"batch row {batch_id} ({span}) does not continue the head chain: previous "
                    f"head {to_hex(row.previous_head)} should be 0x{previous_head.hex()}, head "
                    f"{to_hex(row.head)} should be 0x{expected_head.hex()}",
                    batch_id=batch_id,
                )
            previous_head = bytes(row.head)
            self.ranges.append(
                BatchRange(
                    batch_id=batch_id,
                    first_seq=first,
                    count=count,
                    expected_root=bytes(row.root),
                    on_chain=False,
                )
            )

    def _anchored_since_read(self, batch_id: int, row: Any) -> bool:
        """The batch reached the chain after the audit read it, as the journal has it (the
        anchorer went on while the audit ran): not a finding. A batch the chain lost, or holds
        otherwise, still is."""
        if self.view.late_batch is None or batch_id < self.view.batch_count:
            return False
        late = self.view.late_batch(batch_id)
        return late is not None and (late.first_seq, late.count, late.root) == (
            int(row.first_seq),
            int(row.size),
            as_bytes(row.root),
        )

    def _compare_row(self, row: Any, batch: BatchAnchoredEvent, previous_head: bytes) -> None:
        fields = {
            "first_seq": (row.first_seq, batch.first_seq),
            "count": (row.size, batch.count),
            "root": (as_bytes(row.root), batch.root),
            "previous_head": (as_bytes(row.previous_head), previous_head),
            "head": (as_bytes(row.head), batch.head),
        }
        differs = [
            f"{name} {show(mine)} (chain: {show(theirs)})"
            for name, (mine, theirs) in fields.items()
            if mine != theirs
        ]
        if differs:
            self.add(
                DiscrepancyKind.BATCH_ROW_ALTERED,
                f"batch row {batch.batch_id} differs from the batch on chain: "
                + "; ".join(differs),
                batch_id=batch.batch_id,
            )
        if row.status != BatchStatus.ANCHORED.value:
            return
        where = (
            as_bytes(row.tx_hash) if row.tx_hash is not None else None,
            row.block_number,
            as_bytes(row.block_hash) if row.block_hash is not None else None,
        )
        if where != (batch.tx_hash, batch.block_number, batch.block_hash):
            self.add(
                DiscrepancyKind.BATCH_LOCATION,
                f"batch row {batch.batch_id} says transaction {to_hex(where[0])} in block "
                f"{where[1]} ({to_hex(where[2])}); the chain has it in transaction "
                f"0x{batch.tx_hash.hex()}, block {batch.block_number} "
                f"(0x{batch.block_hash.hex()})",
                batch_id=batch.batch_id,
            )
