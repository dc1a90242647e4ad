"""The ledger audit: recompute every leaf, batch root and head from the journal, compare with chain.

Exports: `ChainBatch`, `ChainView`, `read_chain`, `audit_journal`, `run_ledger_audit`,
`reset_reason`, `read_deployment`, `count_sequenced`.

Two halves. `read_chain` (async) takes what the chain says about the journal's AuditLedger:
whether the deployment is still there, every `BatchAnchored` event (first seq, count, root,
head, transaction, block), `batchCount()`, `head()` and `nextSeq()`; it checks that the events
chain into the head the contract reports. `audit_journal` (sync, the heavy part) streams every
sequenced record in seq order through one loop and checks, per record:

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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from crm_ledger.audit.report import Discrepancy, DiscrepancyKind, LedgerReport
from crm_ledger.audit.snapshot import DeploymentRecord, latest_deployment, read_snapshot
from crm_ledger.db.models import Batch, BatchStatus, Customer, Record
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import FORMAT_VERSION, RecordKind
from crm_ledger.verifier.chain import EMPTY_CODE_HASH, AuditChain

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


@dataclass(frozen=True, slots=True)
class ChainBatch:
    """One batch as the chain has it (from its `BatchAnchored` event)."""

    batch_id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes
    tx_hash: bytes
    block_number: int
    block_hash: bytes


@dataclass
class ChainView:
    """What the chain says about the journal's AuditLedger."""

    deployment: DeploymentRecord | None
    #: Why the deployment is gone from the chain, or None while it is there.
    reset: str | None = None
    batches: list[ChainBatch] = field(default_factory=list)
    batch_count: int = 0
    head: bytes = merkle.ZERO_HASH
    next_seq: int = 0
    #: Ways the chain's own data does not add up.
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """The chain part of a report."""
        deployment = self.deployment
        return {
            "chain_id": deployment.chain_id if deployment else None,
            "contract": deployment.address if deployment else None,
            "epoch": deployment.epoch if deployment else None,
            "reset": self.reset is not None,
            "batch_count": self.batch_count,
            "next_seq": self.next_seq,
            "head": "0x" + self.head.hex(),
        }


async def read_chain(chain: AuditChain | None, deployment: DeploymentRecord | None) -> ChainView:
    """Everything the audit compares the journal with, read from the chain.

    `chain` is bound to `deployment.address`; with no deployment recorded nothing was anchored
    and the chain is not asked. Raises `ChainUnavailable` when the node cannot be reached.
    """
    view = ChainView(deployment=deployment)
    if deployment is None or chain is None:
        return view
    view.reset = await reset_reason(chain, deployment)
    if view.reset is not None:
        return view
    events = await chain.batch_events(deployment.block_number)
    view.batch_count = await chain.batch_count()
    view.head = await chain.head()
    view.next_seq = await chain.next_seq()
    view.batches = [
        ChainBatch(
            batch_id=e.batch_id,
            first_seq=e.first_seq,
            count=e.count,
            root=e.root,
            head=e.head,
            tx_hash=e.tx_hash,
            block_number=e.block_number,
            block_hash=e.block_hash,
        )
        for e in sorted(events, key=lambda e: e.batch_id)
    ]
    view.problems = _chain_problems(view)
    return view


async def reset_reason(chain: AuditChain, deployment: DeploymentRecord) -> str | None:
    """Why `deployment` is no longer on the chain (reset, replaced), or None while it is."""
    chain_id = await chain.chain_id()
    if chain_id != deployment.chain_id:
        return (
            f"the node is chain {chain_id}, but AuditLedger epoch {deployment.epoch} was "
            f"deployed on chain {deployment.chain_id}"
        )
    code_hash = await chain.code_hash(deployment.address)
    if code_hash != deployment.code_hash:
        what = "no code" if code_hash == EMPTY_CODE_HASH else "other code"
        return (
            f"the chain has {what} at {deployment.address}, where AuditLedger epoch "
            f"{deployment.epoch} was deployed: the chain was reset or replaced"
        )
    genesis = await chain.genesis_hash()
    if genesis != deployment.genesis_hash:
        return (
            f"the chain's genesis block is 0x{genesis.hex()}, not 0x"
            f"{deployment.genesis_hash.hex()} as when AuditLedger epoch {deployment.epoch} was "
            "deployed: the chain was replaced"
        )
    return None


def _chain_problems(view: ChainView) -> list[str]:
    problems = []
    head = merkle.ZERO_HASH
    end = 0
    for expected_id, batch in enumerate(view.batches):
        if batch.batch_id != expected_id:
            problems.append(
                f"BatchAnchored events skip from batch {expected_id - 1} to {batch.batch_id}"
            )
            break
        if batch.first_seq != end:
            problems.append(
                f"batch {batch.batch_id} starts at seq {batch.first_seq}, the previous ended "
                f"at {end}"
            )
        head = merkle.next_head(head, batch.root, batch.first_seq, batch.count)
        if batch.head != head:
            problems.append(
                f"batch {batch.batch_id}'s event head 0x{batch.head.hex()} is not "
                f"SHA-256(previous head ‖ root ‖ first_seq ‖ count) = 0x{head.hex()}"
            )
            head = batch.head
        end = batch.first_seq + batch.count
    if view.batch_count != len(view.batches):
        problems.append(
            f"batchCount() is {view.batch_count} but {len(view.batches)} BatchAnchored events "
            "were found"
        )
    if view.head != head:
        problems.append(f"head() is 0x{view.head.hex()}, the events chain to 0x{head.hex()}")
    if view.next_seq != end:
        problems.append(f"nextSeq() is {view.next_seq}, the events end at seq {end}")
    return problems


@dataclass(slots=True)
class _Customer:
    id: str
    #: `"customer_id":"<id>","id":"` as it appears in the customer's canonical documents.
    document_tail: bytes
    key: bytes | None
    erased: bool
    last_leaf_hash: bytes | None


@dataclass(slots=True)
class _Range:
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
class _LinkBreak:
    """Record `seq` links to `previous`, which is not the stored leaf of `previous_seq`."""

    previous_seq: int
    seq: int
    previous: bytes
    record_id: str
    customer_id: str


async def run_ledger_audit(
    *, engine: Engine, chain: AuditChain | None, progress: Progress | None = None
) -> LedgerReport:
    """Read the chain, then audit the journal in a thread; raises `ChainUnavailable`."""
    deployment = await asyncio.to_thread(read_deployment, engine)
    view = await read_chain(chain, deployment)
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


class _Audit:
    """One audit's state; `run` does the work."""

    def __init__(
        self, conn: Connection, view: ChainView, report: LedgerReport, progress: Progress | None
    ) -> None:
        self.conn = conn
        self.view = view
        self.report = report
        self.progress = progress
        self.customers: dict[int, _Customer] = {}
        self.ranges: list[_Range] = []
        self.starts: list[int] = []
        #: Every seq below the end of the batches that has no record, in order.
        self.absent: list[int] = []
        #: customer pk -> (seq, stored leaf hash, recomputed leaf hash) of their latest record.
        self.tips: dict[int, tuple[int, bytes, bytes]] = {}
        self.link_breaks: list[_LinkBreak] = []
        self.unexplained: dict[int, _Range] = {}

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

    def run(self) -> None:
        self._load_customers()
        self._check_chain()
        self._check_batches()
        self._check_records()
        self._resolve_rewrites()
        self._check_pending()

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
        rows = {
            row.id: row
            for row in self.conn.execute(
                select(
                    Batch.id,
                    Batch.first_seq,
                    # Not "count": a Row is a tuple, and tuples have a count() method.
                    Batch.count.label("size"),
                    Batch.root,
                    Batch.previous_head,
                    Batch.head,
                    Batch.status,
                    Batch.tx_hash,
                    Batch.block_number,
                    Batch.block_hash,
                ).order_by(Batch.id)
            )
        }
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
                _Range(
                    batch_id=batch.batch_id,
                    first_seq=batch.first_seq,
                    count=batch.count,
                    expected_root=batch.root,
                    on_chain=True,
                    unknown=row is None,
                )
            )
        chain_end = self.ranges[-1].end if self.ranges else 0
        for batch_id, row in rows.items():
            if batch_id in chain_ids:
                continue
            first, count = int(row.first_seq), int(row.size)
            span = f"seqs {first} to {first + count - 1}"
            if row.status == BatchStatus.ANCHORED.value and self.view.reset is None:
                self.add(
                    DiscrepancyKind.BATCH_NOT_ON_CHAIN,
                    f"batch {batch_id} ({span}) is marked anchored in transaction "
                    f"{_hex(row.tx_hash)}, but the chain has no such batch: the chain rolled "
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
                    f"head {_hex(row.previous_head)} should be 0x{previous_head.hex()}, head "
                    f"{_hex(row.head)} should be 0x{expected_head.hex()}",
                    batch_id=batch_id,
                )
            previous_head = bytes(row.head)
            self.ranges.append(
                _Range(
                    batch_id=batch_id,
                    first_seq=first,
                    count=count,
                    expected_root=bytes(row.root),
                    on_chain=False,
                )
            )
        self.ranges.sort(key=lambda r: r.first_seq)
        self.starts = [r.first_seq for r in self.ranges]
        self.report.batches_checked = len(self.ranges)

    def _compare_row(self, row: Any, batch: ChainBatch, previous_head: bytes) -> None:
        fields = {
            "first_seq": (row.first_seq, batch.first_seq),
            "count": (row.size, batch.count),
            "root": (_bytes(row.root), batch.root),
            "previous_head": (_bytes(row.previous_head), previous_head),
            "head": (_bytes(row.head), batch.head),
        }
        differs = [
            f"{name} {_show(mine)} (chain: {_show(theirs)})"
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
            _bytes(row.tx_hash) if row.tx_hash is not None else None,
            row.block_number,
            _bytes(row.block_hash) if row.block_hash is not None else None,
        )
        if where != (batch.tx_hash, batch.block_number, batch.block_hash):
            self.add(
                DiscrepancyKind.BATCH_LOCATION,
                f"batch row {batch.batch_id} says transaction {_hex(where[0])} in block "
                f"{where[1]} ({_hex(where[2])}); the chain has it in transaction "
                f"0x{batch.tx_hash.hex()}, block {batch.block_number} "
                f"(0x{batch.block_hash.hex()})",
                batch_id=batch.batch_id,
            )

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
            self.customers[pk] = _Customer(
                id=public_id,
                document_tail=b'"customer_id":"' + public_id.encode() + b'","id":"',
                key=_bytes(key) if key is not None else None,
                erased=bool(erased),
                last_leaf_hash=_bytes(last_leaf_hash) if last_leaf_hash is not None else None,
            )

    def _check_records(self) -> None:
        """The hot loop: one pass over every sequenced record, in seq order.

        Written for speed (locals, no per-record function calls but hashlib's): at a million
        records every attribute lookup shows. The drivers in use (pysqlite, psycopg 3) return
        binary columns as `bytes`.
        """
        report = self.report
        add = self.add
        customers = self.customers
        tips = self.tips
        absent = self.absent
        link_breaks = self.link_breaks
        sha256 = hashlib.sha256
        hmac_digest = hmac.digest
        kind_bytes = _KIND_BYTES
        kind_tails = _KIND_TAILS
        leaf_prefix = _LEAF_PREFIX
        document_end = _DOCUMENT_END
        end_quote = -len(_DOCUMENT_END)
        no_tip = (-1, merkle.ZERO_HASH, merkle.ZERO_HASH)
        nobody = _Customer("", b"", None, False, None)
        progress = self.progress

        ranges = iter(self.ranges)
        current = next(ranges, None)
        leaves: list[bytes | None] = []
        first = end = -1
        if current is not None:
            leaves = current.leaves = [None] * current.count
            first, end = current.first_seq, current.end
        batches_end = self.ranges[-1].end if self.ranges else 0
        expected = 0
        checked = 0
        erased_records = 0

        rows = self.conn.execution_options(yield_per=FETCH_ROWS).execute(
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
        for (
            seq,
            kind,
            content,
            commitment,
            previous,
            leaf,
            batch_id,
            customer_pk,
            rid,
            rkey,
        ) in rows:
            checked += 1
            if progress is not None and not checked & PROGRESS_MASK:
                progress(checked)
            if seq != expected:
                if seq < 0:
                    add(
                        DiscrepancyKind.INSERTED_RECORD,
                        f"record {rid} has the negative seq {seq}: it was inserted",
                        seq=seq,
                        record_id=rid,
                    )
                    continue
                self._absent(expected, min(seq, batches_end))
            expected = seq + 1
            if seq >= end:
                while current is not None and seq >= current.end:
                    self._finish(current)
                    current = next(ranges, None)
                    if current is not None:
                        leaves = current.leaves = [None] * current.count
                        first, end = current.first_seq, current.end
                if current is None:
                    first = end = batches_end + 2**64
            if seq < first:
                add(
                    DiscrepancyKind.INSERTED_RECORD,
                    f"record {rid} has seq {seq}, which no batch holds: it was inserted",
                    seq=seq,
                    record_id=rid,
                )
                continue
            assert current is not None
            if batch_id != current.batch_id:
                add(
                    DiscrepancyKind.RECORD_BATCH_MISMATCH,
                    f"record {rid} (seq {seq}) says batch {batch_id}; seq {seq} is in batch "
                    f"{current.batch_id}",
                    seq=seq,
                    record_id=rid,
                )
            customer = customers.get(customer_pk)
            if customer is None:
                # The foreign key makes this impossible short of disabling constraints.
                add(
                    DiscrepancyKind.DOCUMENT_MISMATCH,
                    f"record {rid} (seq {seq}) belongs to no customer",
                    seq=seq,
                    record_id=rid,
                )
                customer = nobody
            key = rkey if rkey is not None else customer.key

            # Content ----------------------------------------------------------------------
            if content is None:
                if customer.erased:
                    erased_records += 1
                else:
                    add(
                        DiscrepancyKind.CONTENT_MISSING,
                        f"record {rid} (seq {seq}) has no content, but its customer "
                        f"{customer.id} was not erased",
                        seq=seq,
                        record_id=rid,
                    )
            elif customer.erased and rkey is None:
                add(
                    DiscrepancyKind.ERASED_CONTENT_PRESENT,
                    f"record {rid} (seq {seq}) still holds content, but its customer "
                    f"{customer.id} was erased",
                    seq=seq,
                    record_id=rid,
                )
            elif key is None:
                add(
                    DiscrepancyKind.KEY_MISSING,
                    f"record {rid} (seq {seq}): its customer {customer.id} has no key but was "
                    "not erased",
                    seq=seq,
                    record_id=rid,
                )
            else:
                if len(key) != 32 or hmac_digest(key, content, "sha256") != commitment:
                    add(
                        DiscrepancyKind.COMMITMENT_MISMATCH,
                        f"record {rid} (seq {seq}): HMAC-SHA256(key, content) is not the stored "
                        f"commitment {_hex(commitment)}: its content or its customer's key was "
                        "altered",
                        seq=seq,
                        record_id=rid,
                        customer_id=customer.id,
                    )
                # A canonical document ends with its top-level members after "body", in this
                # order, and the last quote before `","v":1}` closes "recorded_at": so the
                # last occurrence of this tail is the top level's, not a look-alike in "body".
                tail = customer.document_tail + rid.encode() + kind_tails.get(kind, b"?")
                at = content.rfind(tail)
                if (
                    at < 0
                    or not content.endswith(document_end)
                    or content.find(b'"', at + len(tail)) != len(content) + end_quote
                ):
                    add(
                        DiscrepancyKind.DOCUMENT_MISMATCH,
                        f"record {rid} (seq {seq}): the committed document does not name record "
                        f"{rid}, customer {customer.id} and kind {_kind_name(kind)}",
                        seq=seq,
                        record_id=rid,
                    )

            # Leaf -------------------------------------------------------------------------
            kind_byte = kind_bytes.get(kind)
            if kind_byte is not None and previous is not None and len(commitment) == 32:
                computed = sha256(
                    leaf_prefix + seq.to_bytes(8, "big") + kind_byte + commitment + previous
                ).digest()
            else:
                computed = b""
            if computed != leaf:
                add(
                    DiscrepancyKind.LEAF_MISMATCH,
                    f"record {rid} (seq {seq}): its stored leaf input (kind {kind}, commitment "
                    f"{_hex(commitment)}, previous leaf {_hex(previous)}) hashes to "
                    f"{_hex(computed or None)}, the stored leaf hash is {_hex(leaf)}: one of "
                    "them was altered",
                    seq=seq,
                    record_id=rid,
                )
                current.leaf_findings += 1
            leaves[seq - first] = computed

            # Link -------------------------------------------------------------------------
            # The link may name either version of an inconsistent predecessor: that one is
            # already accused, the link is not.
            tip_seq, tip_leaf, tip_computed = tips.get(customer_pk, no_tip)
            if previous != tip_leaf and previous != tip_computed:
                # A record deleted in between explains the break: it is reported as deleted.
                gap = bisect.bisect_right(absent, tip_seq)
                if gap == len(absent) or absent[gap] >= seq:
                    link_breaks.append(_LinkBreak(tip_seq, seq, previous or b"", rid, customer.id))
            tips[customer_pk] = (seq, leaf or b"", computed)

        if expected < batches_end:
            self._absent(expected, batches_end)
        while current is not None:
            self._finish(current)
            current = next(ranges, None)
            if current is not None:
                current.leaves = [None] * current.count
        report.records_checked = checked
        report.erased_records = erased_records
        if progress is not None:
            progress(checked)

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

    def _range_of(self, seq: int) -> _Range | None:
        index = bisect.bisect_right(self.starts, seq) - 1
        if index >= 0 and seq < self.ranges[index].end:
            return self.ranges[index]
        return None

    def _finish(self, batch: _Range) -> None:
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
        consumed: dict[int, list[_LinkBreak]] = {}
        by_first = sorted(self.unexplained.values(), key=lambda r: r.first_seq)
        starts = [r.first_seq for r in by_first]

        def batch_holding(seq: int) -> _Range | None:
            index = bisect.bisect_right(starts, seq) - 1
            if index >= 0 and seq < by_first[index].end:
                return by_first[index]
            return None

        remaining: list[_LinkBreak] = []
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
                f"customer {customer.id}'s last leaf hash is {_hex(tail)}, which does not match "
                f"their {last}" + ("" if tip is None else f" (leaf 0x{tip[1].hex()})"),
                customer_id=customer.id,
            )

        for batch in by_first:
            leaves = [leaf for leaf in batch.leaves if leaf is not None]
            rewritten: dict[int, bytes] = {}
            for seq, anchored_leaf in hints.get(batch.batch_id, []):
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
                continue
            remaining.extend(consumed.get(batch.batch_id, []))
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

        for link in sorted(remaining, key=lambda link: link.seq):
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
            key = _bytes(rkey) if rkey is not None else (customer.key if customer else None)
            if content is None or key is None or len(key) != 32:
                continue
            if hmac.digest(key, _bytes(content), "sha256") != _bytes(commitment):
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


def _bytes(value: Any) -> bytes:
    """Drivers may hand back memoryview or bytearray for binary columns."""
    return value if isinstance(value, bytes) else bytes(value)


def _hex(value: object) -> str:
    return "null" if value is None else "0x" + _bytes(value).hex()


def _show(value: object) -> str:
    return _hex(value) if isinstance(value, bytes | memoryview) else str(value)


def _kind_name(kind: int) -> str:
    try:
        return RecordKind(kind).name.lower()
    except ValueError:
        return str(kind)
