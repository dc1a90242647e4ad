"""The ledger audit: recompute every leaf, batch root and head from the journal, compare with chain.

Exports: `ChainView`, `read_chain`, `audit_journal`, `run_ledger_audit`,
`reset_reason`, `read_deployment`, `count_sequenced`.

Two halves. `read_chain` (async, `audit.ledger_chain`) takes what the chain says about the
journal's AuditLedger: whether the deployment is still there, every `BatchAnchored` event
(first seq, count, root, head, transaction, block), `batchCount()`, `head()` and `nextSeq()`;
it checks that the events chain into the head the contract reports. `audit_journal` (sync, the
heavy part) streams every sequenced record in seq order through one loop and checks, per record:

    content      HMAC-SHA256(key, content) = stored commitment; the document names this
                 record, its customer and its kind (skipped for erased records)
    leaf         SHA-256(0x00 ‖ leaf input from the stored seq, kind, commitment and previous
                 leaf hash) = stored leaf hash
    link         stored previous leaf hash = stored leaf hash of the customer's previous record
    place        the seq lies inside a batch, no seq is missing, `batch_id` is that batch

and per batch: the root of the recomputed leaves = the root on chain, and each batch row =
the batch on chain (range, root, heads, transaction). The chain is the reference: batches are
grouped by the ranges the chain anchored, so an altered batch row does not shift its neighbours.

Every finding is pinned on the records it accuses and nothing else:

- a link that breaks across a deleted record is the deletion's consequence, not a finding;
- a batch root that differs because one of its records has an inconsistent leaf is that
  record's finding;
- a record rewritten consistently (content, commitment and leaf hash all recomputed) leaves
  its row self-consistent; the next record of the same customer still links to the anchored
  leaf, so that link is tried in place of the stored one: when the batch root then matches
  the chain, the rewritten record is named (`leaf_rewritten`). Only when nothing explains a
  root is the whole batch accused.

The batch rows are checked against the chain by `audit.ledger_batches`; the state the checks
share and the way a finding reaches the report are `audit.ledger_findings`'s.

Example::

    view = await read_chain(chain, deployment)
    report = await asyncio.to_thread(audit_journal, engine, view)
    assert report.clean, report.discrepancies
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from crm_ledger.audit.ledger_batches import BatchChecks
from crm_ledger.audit.ledger_chain import ChainView, read_chain, reset_reason
from crm_ledger.audit.ledger_findings import (
    BatchRange,
    CustomerState,
    LinkBreak,
    as_bytes,
    kind_name,
    to_hex,
)
from crm_ledger.audit.report import DiscrepancyKind, LedgerReport
from crm_ledger.audit.snapshot import DeploymentRecord, latest_deployment, read_snapshot
from crm_ledger.db.models import Customer, Record
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import FORMAT_VERSION, RecordKind
from crm_ledger.verifier.chain import AuditChain, BatchOnChain

__all__ = [
    "ChainView",
    "Progress",
    "audit_journal",
    "count_sequenced",
    "read_chain",
    "read_deployment",
    "reset_reason",
    "run_ledger_audit",
]

Progress = Callable[[int], None]
#: Rows fetched per round trip while streaming records.
FETCH_ROWS = 10_000
#: The progress callback is called every 16,384 records.
PROGRESS_MASK = 16_384 - 1

_KIND_BYTES = {int(kind): bytes([kind]) for kind in RecordKind}
_KIND_TAILS = {
    int(kind): b'","kind":"' + kind.name.lower().encode() + b'","recorded_at":"'
    for kind in RecordKind
}
_LEAF_PREFIX = b"\x00" + bytes([FORMAT_VERSION])
_DOCUMENT_END = b'","v":1}'
#: Content findings whose detail follows the record with a colon (the others run on).
_COLON_FINDINGS = {DiscrepancyKind.KEY_MISSING, DiscrepancyKind.COMMITMENT_MISMATCH}


async def run_ledger_audit(
    *, engine: Engine, chain: AuditChain | None, progress: Progress | None = None
) -> LedgerReport:
    """Read the chain, then audit the journal in a thread; raises `ChainUnavailable`."""
    deployment = await asyncio.to_thread(read_deployment, engine)
    view = await read_chain(chain, deployment)
    if chain is not None:
        loop = asyncio.get_running_loop()

        def late_batch(batch_id: int) -> BatchOnChain | None:
            return asyncio.run_coroutine_threadsafe(chain.batch(batch_id), loop).result(60)

        view.late_batch = late_batch
    return await asyncio.to_thread(audit_journal, engine, view, progress=progress)


def read_deployment(engine: Engine) -> DeploymentRecord | None:
    """The latest recorded AuditLedger deployment (None before the first)."""
    with read_snapshot(engine) as conn:
        return latest_deployment(conn)


def audit_journal(
    engine: Engine, view: ChainView, *, progress: Progress | None = None
) -> LedgerReport:
    """Check every record and batch of the journal against `view`; see the module docstring."""
    started = time.perf_counter()
    report = LedgerReport(started_at=_now(), chain=view.summary())
    with read_snapshot(engine) as conn:
        _Audit(conn, view, report, progress).run()
    report.finished_at = _now()
    report.seconds = time.perf_counter() - started
    return report


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Audit(BatchChecks):
    """One audit's state; `run` does the work."""

    def __init__(
        self, conn: Connection, view: ChainView, report: LedgerReport, progress: Progress | None
    ) -> None:
        super().__init__(conn, view, report)
        self.progress = progress
        self.customers: dict[int, CustomerState] = {}
        #: Every seq below the end of the batches that has no record, in order.
        self.absent: list[int] = []
        #: customer pk -> (seq, stored leaf hash, recomputed leaf hash) of their latest record.
        self.tips: dict[int, tuple[int, bytes, bytes]] = {}
        self.link_breaks: list[LinkBreak] = []
        self.unexplained: dict[int, BatchRange] = {}

    def run(self) -> None:
        self._load_customers()
        self._check_chain()
        self._check_batches()
        self._check_records()
        self._resolve_rewrites()
        self._check_pending()

    # Records -----------------------------------------------------------------------------

    def _load_customers(self) -> None:
        for pk, public_id, key, erased, last_leaf_hash in self.conn.execute(
            select(
                Customer.pk,
                Customer.id,
                Customer.key,
                Customer.erased_at.is_not(None),
                Customer.last_leaf_hash,
            )
        ):
            self.customers[pk] = CustomerState(
                id=public_id,
                document_tail=b'"customer_id":"' + public_id.encode() + b'","id":"',
                key=as_bytes(key) if key is not None else None,
                erased=bool(erased),
                last_leaf_hash=as_bytes(last_leaf_hash) if last_leaf_hash is not None else None,
            )

    def _check_records(self) -> None:
        """The hot loop: one pass over every sequenced record, in seq order.

        Written for speed (locals; per record, one call to `_check_content` besides hashlib's,
        and calls only on findings): at a million records every attribute lookup shows. The
        drivers in use (pysqlite, psycopg 3) return binary columns as `bytes`.
        """
        customers, tips, absent = self.customers, self.tips, self.absent
        sha256, kind_bytes, leaf_prefix = hashlib.sha256, _KIND_BYTES, _LEAF_PREFIX
        check_content = self._check_content
        no_tip = (-1, merkle.ZERO_HASH, merkle.ZERO_HASH)
        nobody = CustomerState("", b"", None, False, None)
        progress = self.progress
        ranges = iter(self.ranges)
        batches_end = self.ranges[-1].end if self.ranges else 0
        current, leaves, first, end = self._next_range(ranges, batches_end)
        expected = checked = erased_records = 0
        for row in self._sequenced_rows():
            seq, kind, content, commitment, previous, leaf, batch_id, customer_pk, rid, rkey = row
            checked += 1
            if progress is not None and not checked & PROGRESS_MASK:
                progress(checked)
            if seq != expected:
                if seq < 0:
                    self._inserted(rid, seq, f"has the negative seq {seq}")
                    continue
                self._absent(expected, min(seq, batches_end))
            expected = seq + 1
            while current is not None and seq >= end:
                self._finish(current)
                current, leaves, first, end = self._next_range(ranges, batches_end)
            if current is None or seq < first:
                self._inserted(rid, seq, f"has seq {seq}, which no batch holds")
                continue
            if batch_id != current.batch_id:
                self._batch_mismatch(rid, seq, batch_id, current.batch_id)
            customer = customers.get(customer_pk)
            if customer is None:
                customer = self._orphan(rid, seq, nobody)
            if check_content(rid, seq, kind, content, commitment, rkey, customer):
                erased_records += 1

            # Leaf -------------------------------------------------------------------------
            kind_byte = kind_bytes.get(kind)
            if kind_byte is not None and previous is not None and len(commitment) == 32:
                computed = sha256(
                    leaf_prefix + seq.to_bytes(8, "big") + kind_byte + commitment + previous
                ).digest()
            else:
                computed = b""
            if computed != leaf:
                self._leaf_mismatch(rid, seq, kind, commitment, previous, computed, leaf, current)
            leaves[seq - first] = computed

            # Link -------------------------------------------------------------------------
            # The link may name either version of an inconsistent predecessor: that one is
            # already accused, the link is not.
            tip_seq, tip_leaf, tip_computed = tips.get(customer_pk, no_tip)
            if previous != tip_leaf and previous != tip_computed:
                # A record deleted in between explains the break: it is reported as deleted.
                gap = bisect.bisect_right(absent, tip_seq)
                if gap == len(absent) or absent[gap] >= seq:
                    self.link_breaks.append(
                        LinkBreak(tip_seq, seq, previous or b"", rid, customer.id)
                    )
            tips[customer_pk] = (seq, leaf or b"", computed)

        if expected < batches_end:
            self._absent(expected, batches_end)
        while current is not None:
            self._finish(current)
            current = self._next_range(ranges, batches_end)[0]
        self.report.records_checked = checked
        self.report.erased_records = erased_records
        if progress is not None:
            progress(checked)

    def _sequenced_rows(self) -> Any:
        """Every sequenced record's audited columns, streamed in seq order."""
        return self.conn.execution_options(yield_per=FETCH_ROWS).execute(
            select(
                Record.seq,
                Record.kind,
                Record.content,
                Record.commitment,
                Record.previous_leaf_hash,
                Record.leaf_hash,
                Record.batch_id,
                Record.customer_pk,
                Record.id,
                Record.key,
            )
            .where(Record.seq.is_not(None))
            .order_by(Record.seq)
        )

    @staticmethod
    def _next_range(
        ranges: Iterator[BatchRange], batches_end: int
    ) -> tuple[BatchRange | None, list[bytes | None], int, int]:
        """The next batch with a fresh list for its leaves, its first seq and its end; past
        the last batch: None, and a range no seq reaches."""
        batch = next(ranges, None)
        if batch is None:
            beyond = batches_end + 2**64
            return None, [], beyond, beyond
        batch.leaves = [None] * batch.count
        return batch, batch.leaves, batch.first_seq, batch.end

    def _check_content(
        self,
        rid: str,
        seq: int,
        kind: int,
        content: bytes | None,
        commitment: bytes,
        rkey: bytes | None,
        customer: CustomerState,
    ) -> bool:
        """Check a record's content against its commitment and its document's top-level
        members; True when the record is one of an erased customer's (no content, rightly)."""
        key = rkey if rkey is not None else customer.key
        if content is None:
            if customer.erased:
                return True
            self._content_finding(DiscrepancyKind.CONTENT_MISSING, rid, seq, customer)
        elif customer.erased and rkey is None:
            self._content_finding(DiscrepancyKind.ERASED_CONTENT_PRESENT, rid, seq, customer)
        elif key is None:
            self._content_finding(DiscrepancyKind.KEY_MISSING, rid, seq, customer)
        else:
            if len(key) != 32 or hmac.digest(key, content, "sha256") != commitment:
                self._content_finding(
                    DiscrepancyKind.COMMITMENT_MISMATCH, rid, seq, customer, commitment
                )
            # A canonical document ends with its top-level members after "body", in this
            # order, and the last quote before `","v":1}` closes "recorded_at": so the
            # last occurrence of this tail is the top level's, not a look-alike in "body".
            tail = customer.document_tail + rid.encode() + _KIND_TAILS.get(kind, b"?")
            at = content.rfind(tail)
            if (
                at < 0
                or not content.endswith(_DOCUMENT_END)
                or content.find(b'"', at + len(tail)) != len(content) - len(_DOCUMENT_END)
            ):
                self.add(
                    DiscrepancyKind.DOCUMENT_MISMATCH,
                    f"record {rid} (seq {seq}): the committed document does not name record "
                    f"{rid}, customer {customer.id} and kind {kind_name(kind)}",
                    seq=seq,
                    record_id=rid,
                )
        return False

    def _content_finding(
        self,
        kind: DiscrepancyKind,
        rid: str,
        seq: int,
        customer: CustomerState,
        commitment: bytes | None = None,
    ) -> None:
        what = {
            DiscrepancyKind.CONTENT_MISSING: "has no content, but its customer "
            f"{customer.id} was not erased",
            DiscrepancyKind.ERASED_CONTENT_PRESENT: "still holds content, but its customer "
            f"{customer.id} was erased",
            DiscrepancyKind.KEY_MISSING: f"its customer {customer.id} has no key but was not "
            "erased",
            DiscrepancyKind.COMMITMENT_MISMATCH: "HMAC-SHA256(key, content) is not the stored "
            f"commitment {to_hex(commitment)}: its content or its customer's key was altered",
        }[kind]
        separator = ": " if kind in _COLON_FINDINGS else " "
        self.add(
            kind,
            f"record {rid} (seq {seq}){separator}{what}",
            seq=seq,
            record_id=rid,
            customer_id=customer.id if kind is DiscrepancyKind.COMMITMENT_MISMATCH else None,
        )

    def _inserted(self, rid: str, seq: int, why: str) -> None:
        self.add(
            DiscrepancyKind.INSERTED_RECORD,
            f"record {rid} {why}: it was inserted",
            seq=seq,
            record_id=rid,
        )

    def _batch_mismatch(self, rid: str, seq: int, batch_id: int, holder: int) -> None:
        self.add(
            DiscrepancyKind.RECORD_BATCH_MISMATCH,
            f"record {rid} (seq {seq}) says batch {batch_id}; seq {seq} is in batch {holder}",
            seq=seq,
            record_id=rid,
        )

    def _orphan(self, rid: str, seq: int, nobody: CustomerState) -> CustomerState:
        # The foreign key makes this impossible short of disabling constraints.
        self.add(
            DiscrepancyKind.DOCUMENT_MISMATCH,
            f"record {rid} (seq {seq}) belongs to no customer",
            seq=seq,
            record_id=rid,
        )
        return nobody

    def _leaf_mismatch(
        self,
        rid: str,
        seq: int,
        kind: int,
        commitment: bytes,
        previous: bytes | None,
        computed: bytes,
        leaf: bytes | None,
        batch: BatchRange,
    ) -> None:
        self.add(
            DiscrepancyKind.LEAF_MISMATCH,
            f"record {rid} (seq {seq}): its stored leaf input (kind {kind}, commitment "
            f"{to_hex(commitment)}, previous leaf {to_hex(previous)}) hashes to "
            f"{to_hex(computed or None)}, the stored leaf hash is {to_hex(leaf)}: one of "
            "them was altered",
            seq=seq,
            record_id=rid,
        )
        batch.leaf_findings += 1

    def _absent(self, start: int, stop: int) -> None:
        """Seqs `start`..`stop - 1` have no record."""
        for seq in range(start, stop):
            self.absent.append(seq)
            batch = self._range_of(seq)
            if batch is not None and not batch.unknown:
                self.add(
                    DiscrepancyKind.DELETED_RECORD,
                    f"seq {seq} is inside batch {batch.batch_id} but no record has it: the "
                    "record was deleted",
                    seq=seq,
                    batch_id=batch.batch_id,
                )

    def _range_of(self, seq: int) -> BatchRange | None:
        index = bisect.bisect_right(self.starts, seq) - 1
        if index >= 0 and seq < self.ranges[index].end:
            return self.ranges[index]
        return None

    def _finish(self, batch: BatchRange) -> None:
        """All records of `batch` were seen: compare its root."""
        leaves = batch.leaves
        if any(leaf is None for leaf in leaves) or batch.leaf_findings:
            # Deleted records or inconsistent leaves, already reported, explain any difference.
            batch.leaves = []
            return
        complete = [leaf for leaf in leaves if leaf is not None]
        if merkle.root(complete) != batch.expected_root:
            self.unexplained[batch.batch_id] = batch
        else:
            batch.leaves = []

    def _resolve_rewrites(self) -> None:
        """Pin unexplained batch roots on rewritten records, using the links that name them."""
        hints: dict[int, list[tuple[int, bytes]]] = {}
        consumed: dict[int, list[LinkBreak]] = {}
        by_first = sorted(self.unexplained.values(), key=lambda r: r.first_seq)
        starts = [r.first_seq for r in by_first]

        def batch_holding(seq: int) -> BatchRange | None:
            index = bisect.bisect_right(starts, seq) - 1
            if index >= 0 and seq < by_first[index].end:
                return by_first[index]
            return None

        remaining: list[LinkBreak] = []
        for link in self.link_breaks:
            batch = batch_holding(link.previous_seq) if link.previous_seq >= 0 else None
            if batch is None:
                remaining.append(link)
                continue
            hints.setdefault(batch.batch_id, []).append((link.previous_seq, link.previous))
            consumed.setdefault(batch.batch_id, []).append(link)
        for pk, customer in self.customers.items():
            tip = self.tips.get(pk)
            tail = customer.last_leaf_hash
            if (tip is None and tail is None) or (tip is not None and tail in tip[1:]):
                continue
            if self._absent_after(tip[0] if tip is not None else -1):
                # Records after their last one were deleted (and are reported as such).
                continue
            if tip is not None and tail is not None:
                batch = batch_holding(tip[0])
                if batch is not None:
                    hints.setdefault(batch.batch_id, []).append((tip[0], tail))
                    continue
            last = "no sequenced record" if tip is None else f"last record at seq {tip[0]}"
            self.add(
                DiscrepancyKind.CUSTOMER_TAIL_MISMATCH,
                f"customer {customer.id}'s last leaf hash is {to_hex(tail)}, which does not match "
                f"their {last}" + ("" if tip is None else f" (leaf 0x{tip[1].hex()})"),
                customer_id=customer.id,
            )

        for batch in by_first:
            if not self._explain_root(batch, hints.get(batch.batch_id, [])):
                remaining.extend(consumed.get(batch.batch_id, []))
        for link in sorted(remaining, key=lambda link: link.seq):
            self._broken_link(link)

    def _explain_root(self, batch: BatchRange, hints: list[tuple[int, bytes]]) -> bool:
        """Try the anchored leaves `hints` name in place of the stored ones: True (and the
        rewritten records named) when that restores the batch's root; else the batch is
        accused."""
        leaves = [leaf for leaf in batch.leaves if leaf is not None]
        rewritten: dict[int, bytes] = {}
        for seq, anchored_leaf in hints:
            index = seq - batch.first_seq
            if leaves[index] != anchored_leaf:
                leaves[index] = anchored_leaf
                rewritten[seq] = anchored_leaf
        if rewritten and merkle.root(leaves) == batch.expected_root:
            for seq, anchored_leaf in sorted(rewritten.items()):
                self.add(
                    DiscrepancyKind.LEAF_REWRITTEN,
                    f"seq {seq} was rewritten: its stored leaf is not the anchored one, "
                    f"0x{anchored_leaf.hex()}, which its customer's next record still links "
                    f"to and which restores the root of batch {batch.batch_id}",
                    seq=seq,
                    batch_id=batch.batch_id,
                )
            return True
        where = "on chain" if batch.on_chain else "in its batch row"
        self.add(
            DiscrepancyKind.BATCH_ROOT_MISMATCH,
            f"the records of batch {batch.batch_id} (seqs {batch.first_seq} to "
            f"{batch.end - 1}) hash to 0x{merkle.root(leaves).hex()}, not to the root "
            f"{where}, 0x{batch.expected_root.hex()}, and no single record explains it",
            batch_id=batch.batch_id,
            first_seq=batch.first_seq,
            last_seq=batch.end - 1,
        )
        return False

    def _broken_link(self, link: LinkBreak) -> None:
        before = (
            "to be its customer's first record"
            if link.previous_seq < 0
            else f"the leaf of its customer's previous record, seq {link.previous_seq}"
        )
        self.add(
            DiscrepancyKind.CHAIN_LINK_BROKEN,
            f"record {link.record_id} (seq {link.seq}) links to previous leaf "
            f"0x{link.previous.hex()}, which is not {before}",
            seq=link.seq,
            record_id=link.record_id,
            customer_id=link.customer_id,
        )

    def _absent_after(self, seq: int) -> bool:
        return bool(self.absent) and self.absent[-1] > seq

    def _check_pending(self) -> None:
        """Records not sequenced yet: only their commitment can be checked."""
        pending = 0
        rows = self.conn.execution_options(yield_per=FETCH_ROWS).execute(
            select(Record.id, Record.content, Record.commitment, Record.customer_pk, Record.key)
            .where(Record.seq.is_(None))
            .order_by(Record.pk)
        )
        for rid, content, commitment, customer_pk, rkey in rows:
            pending += 1
            customer = self.customers.get(customer_pk)
            key = as_bytes(rkey) if rkey is not None else (customer.key if customer else None)
            if content is None or key is None or len(key) != 32:
                continue
            if hmac.digest(key, as_bytes(content), "sha256") != as_bytes(commitment):
                self.add(
                    DiscrepancyKind.COMMITMENT_MISMATCH,
                    f"pending record {rid}: HMAC-SHA256(key, content) is not the stored "
                    "commitment: its content or its customer's key was altered",
                    record_id=rid,
                    customer_id=customer.id if customer else None,
                )
        self.report.pending_records = pending


def count_sequenced(engine: Engine) -> int:
    """How many records have a seq (the audit's total, for progress bars)."""
    with read_snapshot(engine) as conn:
        return int(
            conn.execute(select(func.count()).where(Record.seq.is_not(None))).scalar_one() or 0
        )
