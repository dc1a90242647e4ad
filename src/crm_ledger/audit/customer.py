"""The customer audit: every record of one customer, from content to the root on chain.

Exports: `RecordStatus`, `RecordFinding`, `CustomerReport`, `audit_customer`.

Per record, in seq order (pending records last):

    content     HMAC-SHA256(key, content) = commitment, and the document names the record,
                the customer and the kind (not for erased records: their content is gone)
    leaf        SHA-256(0x00 ‖ leaf input from the stored fields) = stored leaf hash
    inclusion   the record's leaf, among the stored leaves of its batch, gives the batch root
                the chain holds for that batch id (and the chain's range is the batch's)
    link        its previous leaf hash is the leaf of the customer's previous record (zeros
                for the first); the customer's `last_leaf_hash` is the leaf of their last one

and its status: `ok`; `pending` (not anchored yet); `erased` (content deleted by an erasure,
leaf and inclusion still proven); `tampered` (with each problem found). A link that points at
a record no longer in the journal becomes an entry of its own with status `missing`, placed
where the record is gone.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from crm_ledger.audit.ledger import read_deployment, reset_reason
from crm_ledger.audit.ledger_findings import to_hex
from crm_ledger.audit.snapshot import latest_deployment, read_snapshot
from crm_ledger.db.models import Batch, BatchStatus, Customer, Record
from crm_ledger.errors import NotFound
from crm_ledger.journal.schemas import is_public_id
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import FORMAT_VERSION, RecordKind
from crm_ledger.verifier.chain import AuditChain, BatchOnChain


class RecordStatus(enum.StrEnum):
    """What the customer audit says about one record."""

    OK = "ok"
    PENDING = "pending"
    TAMPERED = "tampered"
    MISSING = "missing"
    ERASED = "erased"


@dataclass
class RecordFinding:
    """One record (or one gone record) of the customer and what was found."""

    status: RecordStatus
    record_id: str | None = None
    seq: int | None = None
    kind: str | None = None
    batch_id: int | None = None
    problems: list[str] = field(default_factory=list)
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form for `GET /v1/audit/customers/{id}`."""
        out: dict[str, Any] = {
            "status": self.status.value,
            "record_id": self.record_id,
            "seq": self.seq,
            "kind": self.kind,
            "batch_id": self.batch_id,
        }
        if self.problems:
            out["problems"] = self.problems
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class CustomerReport:
    """The customer audit's outcome."""

    customer_id: str
    erased: bool
    records: list[RecordFinding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """`ok` when nothing is tampered or missing, else `tampered`."""
        bad = {RecordStatus.TAMPERED, RecordStatus.MISSING}
        if self.problems or any(r.status in bad for r in self.records):
            return "tampered"
        return "ok"

    def counts(self) -> dict[str, int]:
        """How many records have each status."""
        out = {status.value: 0 for status in RecordStatus}
        for finding in self.records:
            out[finding.status.value] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON form for `GET /v1/audit/customers/{id}`."""
        return {
            "customer_id": self.customer_id,
            "verdict": self.verdict,
            "erased": self.erased,
            "counts": self.counts(),
            "problems": self.problems,
            "records": [r.to_json() for r in self.records],
        }


@dataclass(frozen=True, slots=True)
class _Row:
    id: str
    seq: int | None
    kind: int
    content: bytes | None
    commitment: bytes
    previous: bytes | None
    leaf: bytes | None
    batch_id: int | None
    key: bytes | None


@dataclass
class _Journal:
    """Everything the audit reads from the database, in one snapshot."""

    customer_pk: int
    customer_id: str
    key: bytes | None
    erased: bool
    last_leaf_hash: bytes | None
    records: list[_Row]
    #: batch id -> (first seq, count, root, status)
    batches: dict[int, tuple[int, int, bytes, str]]
    #: batch id -> stored leaf hash of every seq in the batch's range (None where absent)
    batch_leaves: dict[int, list[bytes | None]]
    deployment_address: str | None


async def audit_customer(
    *, engine: Engine, chain: AuditChain | None, customer_id: str
) -> CustomerReport:
    """Audit customer `customer_id`; raises `NotFound`, and `ChainUnavailable` from the chain."""
    journal = await asyncio.to_thread(_read, engine, customer_id)
    on_chain: dict[int, BatchOnChain | None] = {}
    report = CustomerReport(customer_id=journal.customer_id, erased=journal.erased)
    anchored = [
        batch_id
        for batch_id, (*_, status) in journal.batches.items()
        if status == BatchStatus.ANCHORED.value
    ]
    deployment = await asyncio.to_thread(read_deployment, engine)
    if anchored and (chain is None or deployment is None):
        report.problems.append(
            "no chain to check anchored batches on: no AuditLedger deployment is recorded"
        )
    elif anchored and chain is not None and deployment is not None:
        reset = await reset_reason(chain, deployment)
        if reset is not None:
            report.problems.append(f"no record can be checked against the chain: {reset}")
        else:
            for batch_id in anchored:
                on_chain[batch_id] = await chain.batch(batch_id)
    await asyncio.to_thread(_check_in_snapshot, engine, journal, on_chain, report)
    return report


def _check_in_snapshot(
    engine: Engine,
    journal: _Journal,
    on_chain: dict[int, BatchOnChain | None],
    report: CustomerReport,
) -> None:
    with read_snapshot(engine) as conn:
        _check(journal, on_chain, report, _Gaps(conn))


class _Gaps:
    """Whether seqs are missing from the journal, asked only where a link breaks."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def between(self, after: int, before: int) -> bool:
        """Some seq strictly between `after` and `before` has no record."""
        if before - after <= 1:
            return False
        present = self.conn.execute(
            select(func.count()).where(Record.seq > after, Record.seq < before)
        ).scalar_one()
        return int(present) < before - after - 1

    def after(self, seq: int) -> bool:
        """Some seq after `seq`, inside the batches, has no record."""
        end = self.conn.execute(select(func.max(Batch.first_seq + Batch.count))).scalar_one()
        return end is not None and self.between(seq, int(end))


def _read(engine: Engine, customer_id: str) -> _Journal:
    with read_snapshot(engine) as conn:
        customer = None
        if is_public_id(customer_id):
            customer = conn.execute(
                select(
                    Customer.pk,
                    Customer.id,
                    Customer.key,
                    Customer.erased_at,
                    Customer.last_leaf_hash,
                ).where(Customer.id == customer_id.lower())
            ).first()
        if customer is None:
            raise NotFound(f"no customer with id {customer_id!r}", customer_id=customer_id)
        rows = [
            _Row(
                id=r.id,
                seq=r.seq,
                kind=r.kind,
                content=_b(r.content),
                commitment=bytes(r.commitment),
                previous=_b(r.previous_leaf_hash),
                leaf=_b(r.leaf_hash),
                batch_id=r.batch_id,
                key=_b(r.key),
            )
            for r in conn.execute(
                select(
                    Record.id,
                    Record.seq,
                    Record.kind,
                    Record.content,
                    Record.commitment,
                    Record.previous_leaf_hash,
                    Record.leaf_hash,
                    Record.batch_id,
                    Record.key,
                )
                .where(Record.customer_pk == customer.pk)
                .order_by(Record.seq.is_(None), Record.seq, Record.pk)
            )
        ]
        batch_ids = {r.batch_id for r in rows if r.batch_id is not None}
        batches = {
            b.id: (int(b.first_seq), int(b.size), bytes(b.root), str(b.status))
            for b in conn.execute(
                select(
                    Batch.id, Batch.first_seq, Batch.count.label("size"), Batch.root, Batch.status
                ).where(Batch.id.in_(batch_ids))
            )
        }
        batch_leaves = {
            batch_id: _stored_leaves(conn, first, count)
            for batch_id, (first, count, _root, _status) in batches.items()
        }
        deployment = latest_deployment(conn)
        return _Journal(
            customer_pk=customer.pk,
            customer_id=customer.id,
            key=_b(customer.key),
            erased=customer.erased_at is not None,
            last_leaf_hash=_b(customer.last_leaf_hash),
            records=rows,
            batches=batches,
            batch_leaves=batch_leaves,
            deployment_address=deployment.address if deployment else None,
        )


def _stored_leaves(conn: Connection, first: int, count: int) -> list[bytes | None]:
    leaves: list[bytes | None] = [None] * count
    for seq, leaf in conn.execute(
        select(Record.seq, Record.leaf_hash).where(Record.seq >= first, Record.seq < first + count)
    ):
        leaves[seq - first] = _b(leaf)
    return leaves


def _check(
    journal: _Journal,
    on_chain: dict[int, BatchOnChain | None],
    report: CustomerReport,
    gaps: _Gaps,
) -> None:
    previous_seq = -1
    previous_leaves: tuple[bytes, ...] = (merkle.ZERO_HASH,)
    last_sequenced: _Row | None = None
    for row in journal.records:
        finding = RecordFinding(
            status=RecordStatus.OK,
            record_id=row.id,
            seq=row.seq,
            kind=_kind_name(row.kind),
            batch_id=row.batch_id,
        )
        erased = _check_content(journal, row, finding)
        pending = row.seq is None
        if row.seq is not None:
            computed = _check_leaf(row, finding)
            pending = _check_inclusion(journal, row, computed, on_chain, finding)
            if row.previous not in previous_leaves:
                if gaps.between(previous_seq, row.seq):
                    report.records.append(
                        RecordFinding(
                            status=RecordStatus.MISSING,
                            detail=(
                                f"record seq {row.seq} links to leaf {to_hex(row.previous)}, "
                                "which is no longer in the journal: a record of this customer "
                                + (
                                    f"between seq {previous_seq} and seq {row.seq}"
                                    if previous_seq >= 0
                                    else f"before seq {row.seq}"
                                )
                                + " is gone"
                            ),
                        )
                    )
                else:
                    before = (
                        "zeros (the customer's first record)"
                        if previous_seq < 0
                        else f"the leaf of the customer's previous record, seq {previous_seq}"
                    )
                    finding.problems.append(
                        f"link: its previous leaf hash {to_hex(row.previous)} is not {before}"
                    )
            previous_seq = row.seq
            previous_leaves = tuple(leaf for leaf in (row.leaf, computed) if leaf is not None)
            last_sequenced = row
        if finding.problems:
            finding.status = RecordStatus.TAMPERED
        elif erased:
            finding.status = RecordStatus.ERASED
        elif pending:
            finding.status = RecordStatus.PENDING
        report.records.append(finding)
    _check_tail(journal, previous_seq, previous_leaves, last_sequenced, report, gaps)


def _check_tail(
    journal: _Journal,
    last_seq: int,
    last_leaves: tuple[bytes, ...],
    last: _Row | None,
    report: CustomerReport,
    gaps: _Gaps,
) -> None:
    tail = journal.last_leaf_hash
    if last is None and tail is None:
        return
    if last is not None and tail in last_leaves:
        return
    if not gaps.after(last_seq):
        report.problems.append(
            f"the customer's last leaf hash {to_hex(tail)} is not the leaf of their last record"
            + (f" (seq {last_seq})" if last is not None else " (they have none)")
            + ": it was altered"
        )
        return
    report.records.append(
        RecordFinding(
            status=RecordStatus.MISSING,
            detail=(
                f"the customer's chain ends at leaf {to_hex(tail)}, but their last record in the "
                + (f"journal is seq {last_seq}" if last is not None else "journal is none")
                + ": a later record of theirs is gone"
            ),
        )
    )


def _check_content(journal: _Journal, row: _Row, finding: RecordFinding) -> bool:
    """Check content against commitment; True when the content was erased."""
    if row.content is None:
        if journal.erased:
            return True
        finding.problems.append("content: the record has none, and its customer was not erased")
        return False
    if journal.erased and row.key is None:
        finding.problems.append("content: the customer was erased but this record still has it")
    key = row.key if row.key is not None else journal.key
    if key is None:
        finding.problems.append("commitment: the customer has no key, and was not erased")
        return False
    if len(key) != 32 or hmac.digest(key, row.content, "sha256") != row.commitment:
        finding.problems.append(
            f"commitment: HMAC-SHA256(key, content) is not the stored commitment "
            f"{to_hex(row.commitment)}: the content or the customer's key was altered"
        )
    try:
        document = json.loads(row.content)
        named = (document["id"], document["customer_id"], document["kind"], document["v"])
    except (ValueError, TypeError, KeyError):
        finding.problems.append("document: the content is not a ledger document")
        return False
    expected = (row.id, journal.customer_id, _kind_name(row.kind), FORMAT_VERSION)
    if named != expected:
        finding.problems.append(
            f"document: it names record {named[0]}, customer {named[1]}, kind {named[2]}, "
            f"version {named[3]}; expected {expected[0]}, {expected[1]}, {expected[2]}, "
            f"{expected[3]}"
        )
    return False


def _check_leaf(row: _Row, finding: RecordFinding) -> bytes | None:
    """Recompute the leaf from the stored fields; None when it cannot be encoded."""
    assert row.seq is not None
    if row.kind not in {int(k) for k in RecordKind} or row.previous is None or row.seq < 0:
        finding.problems.append("leaf: the stored leaf input fields are not a valid leaf input")
        return None
    computed = hashlib.sha256(
        b"\x00"
        + bytes([FORMAT_VERSION])
        + row.seq.to_bytes(8, "big")
        + bytes([row.kind])
        + row.commitment
        + row.previous
    ).digest()
    if computed != row.leaf:
        finding.problems.append(
            f"leaf: the leaf input hashes to {to_hex(computed)}, the stored leaf hash is "
            f"{to_hex(row.leaf)}"
        )
    return computed


def _check_inclusion(
    journal: _Journal,
    row: _Row,
    computed: bytes | None,
    on_chain: dict[int, BatchOnChain | None],
    finding: RecordFinding,
) -> bool:
    """Check the record's leaf is in its batch's root on chain; True while not anchored yet."""
    assert row.seq is not None
    batch = journal.batches.get(row.batch_id) if row.batch_id is not None else None
    if batch is None:
        finding.problems.append(
            f"inclusion: the record is sequenced but batch {row.batch_id} is unknown"
        )
        return False
    first, count, root, status = batch
    if not first <= row.seq < first + count:
        finding.problems.append(
            f"inclusion: seq {row.seq} is outside batch {row.batch_id} (seqs {first} to "
            f"{first + count - 1})"
        )
        return False
    if status != BatchStatus.ANCHORED.value:
        return True
    assert row.batch_id is not None
    anchored = on_chain.get(row.batch_id)
    if anchored is None:
        if row.batch_id in on_chain:
            finding.detail = (
                f"batch {row.batch_id} is not on chain any more (the chain rolled back); the "
                "anchorer anchors it again"
            )
            return True
        anchored_root, anchored_range = root, (first, count)
        where = "in its batch row (the chain could not be asked)"
    else:
        anchored_root, anchored_range = anchored.root, (anchored.first_seq, anchored.count)
        where = "on chain"
    if anchored_range != (first, count):
        finding.problems.append(
            f"inclusion: batch {row.batch_id} covers seqs {first} to {first + count - 1} in the "
            f"journal but {anchored_range[0]} to {sum(anchored_range) - 1} on chain"
        )
        return False
    leaves = list(journal.batch_leaves[row.batch_id])
    leaves[row.seq - first] = computed
    if any(leaf is None for leaf in leaves):
        finding.problems.append(
            f"inclusion: batch {row.batch_id} lacks records (some were deleted), so its root "
            "cannot be rebuilt"
        )
        return False
    rebuilt = merkle.root([leaf for leaf in leaves if leaf is not None])
    if rebuilt != anchored_root:
        finding.problems.append(
            f"inclusion: with this record's leaf, batch {row.batch_id} hashes to "
            f"{to_hex(rebuilt)}, but its root {where} is {to_hex(anchored_root)}: this record or "
            "another of the batch was altered (the ledger audit names which)"
        )
    return False


def _kind_name(kind: int) -> str:
    try:
        return RecordKind(kind).name.lower()
    except ValueError:
        return str(kind)


def _b(value: Any) -> bytes | None:
    return None if value is None else bytes(value)
