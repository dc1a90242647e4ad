"""Journal side of anchoring: cutting batches and recording what the chain did with them.

Exports: `cut_batch`, `plan_cut`, `CutPlan`, `unfinished_batches`, `record_progress`,
`mark_anchored`, `Location`, `reset_batches_from`, `anchored_end`, `last_anchored_batch_id`,
`recent_anchored_batches`, `pending_summary`.

Every function here is one short database transaction; the anchorer calls them from a thread.
Cutting is the only place that assigns `seq`, so seqs are contiguous by construction: the next
batch starts where the last one ended, whatever happened on chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db import bulk, outbox
from crm_ledger.db.models import Batch, BatchStatus, Customer, Record, utcnow
from crm_ledger.db.session import reading
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import LeafInput, RecordKind

# What cutting sets on each record, in `bulk.update_rows` order (then the record's pk).
_CUT_COLUMNS = ("seq", "previous_leaf_hash", "leaf_hash", "batch_id")


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What the chain needs to anchor one batch (a detached copy of the `Batch` row)."""

    id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes
    status: str
    tx_hash: bytes | None

    @classmethod
    def of(cls, batch: Batch) -> BatchPlan:
        return cls(
            id=batch.id,
            first_seq=batch.first_seq,
            count=batch.count,
            root=batch.root,
            head=batch.head,
            status=batch.status,
            tx_hash=batch.tx_hash,
        )


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """How much is waiting to be cut, and since when."""

    count: int
    oldest_created_at: datetime | None


def pending_summary(session_factory: sessionmaker[Session], *, limit: int | None) -> PendingSummary:
    """Records without a seq (counted up to `limit`) and the creation time of the oldest.

    Counting stops at `limit` so that deciding whether a batch is due stays cheap however
    large the backlog is.
    """
    with reading(session_factory) as session:
        pending = select(Record.pk).where(Record.seq.is_(None))
        if limit is not None:
            pending = pending.order_by(Record.pk).limit(limit)
        count = session.scalar(select(func.count()).select_from(pending.subquery()))
        oldest = session.scalar(
            select(Record.created_at).where(Record.seq.is_(None)).order_by(Record.pk).limit(1)
        )
        return PendingSummary(count=int(count or 0), oldest_created_at=oldest)


@dataclass(frozen=True, slots=True)
class CutPlan:
    """The next batch worked out from a snapshot of the journal (`plan_cut`), to be written by
    `record_progress` while the journal's last batch is still the one it was worked out after."""

    after: tuple[int, bytes] | None  # (id, head) of the last batch then; None: no batch yet
    max_records: int
    batch: Batch
    record_updates: list[tuple[int, bytes, bytes, int, int]]
    tips: dict[int, bytes]


def cut_batch(session_factory: sessionmaker[Session], *, max_records: int) -> BatchPlan | None:
    """Assign seqs to up to `max_records` pending records and write the batch, in one commit.

    Records are taken in insertion (`pk`) order; each gets the next seq, a leaf input that links
    to its customer's previous leaf, and the batch id. Returns None when nothing is pending.
    """
    with session_factory() as session, session.begin():
        return _cut(session, max_records=max_records)


def plan_cut(session_factory: sessionmaker[Session], *, max_records: int) -> CutPlan | None:
    """`cut_batch`'s reading and hashing, in a read-only transaction (None: nothing pending).

    The anchorer works the next batch out first and then writes it (`record_progress`), so that
    it holds SQLite's one write lock, which the API's commits queue for, only for the writes.
    What it read cannot change meanwhile unless another batch is cut: only a cut assigns seqs
    and moves a customer's last leaf, and the anchorer, the one cutter, is a singleton.
    """
    with reading(session_factory) as session:
        return _plan(session, max_records=max_records)


def _cut(session: Session, *, max_records: int) -> BatchPlan | None:
    """`cut_batch` in the caller's transaction."""
    plan = _plan(session, max_records=max_records)
    return None if plan is None else _write_cut(session, plan)


def _last_batch(session: Session) -> tuple[int, bytes] | None:
    row = session.execute(select(Batch.id, Batch.head).order_by(Batch.id.desc()).limit(1)).first()
    return None if row is None else (int(row.id), bytes(row.head))


def _plan(session: Session, *, max_records: int) -> CutPlan | None:
    last = session.scalars(select(Batch).order_by(Batch.id.desc()).limit(1)).first()
    batch_id = 0 if last is None else last.id + 1
    first_seq = 0 if last is None else last.first_seq + last.count
    previous_head = merkle.ZERO_HASH if last is None else last.head

    rows = session.execute(
        select(Record.pk, Record.kind, Record.commitment, Record.customer_pk)
        .where(Record.seq.is_(None))
        .order_by(Record.pk)
        .limit(max_records)
    ).all()
    if not rows:
        return None

    customer_pks = {row.customer_pk for row in rows}
    tips: dict[int, bytes] = {
        pk: tip or merkle.ZERO_HASH
        for pk, tip in session.execute(
            select(Customer.pk, Customer.last_leaf_hash).where(Customer.pk.in_(customer_pks))
        )
    }
    record_updates = []
    leaf_hashes = []
    for offset, row in enumerate(rows):
        previous = tips[row.customer_pk]
        leaf_hash = LeafInput(
            seq=first_seq + offset,
            kind=RecordKind(row.kind),
            commitment=row.commitment,
            previous_leaf_hash=previous,
        ).leaf_hash()
        tips[row.customer_pk] = leaf_hash
        leaf_hashes.append(leaf_hash)
        record_updates.append((first_seq + offset, previous, leaf_hash, batch_id, row.pk))

    root = merkle.root(leaf_hashes)
    batch = Batch(
        id=batch_id,
        first_seq=first_seq,
        count=len(rows),
        root=root,
        previous_head=previous_head,
        head=merkle.next_head(previous_head, root, first_seq, len(rows)),
        status=BatchStatus.CUT.value,
    )
    return CutPlan(
        after=None if last is None else (last.id, bytes(last.head)),
        max_records=max_records,
        batch=batch,
        record_updates=record_updates,
        tips=tips,
    )


def _write_cut(session: Session, plan: CutPlan) -> BatchPlan:
    batch = plan.batch
    session.add(batch)
    session.flush()
    # Straight to the driver (`db.bulk`): the ORM's bulk update compiled every row's
    # parameters one by one, half the cut's time for 2,000 records.
    bulk.update_rows(session, Record.__tablename__, _CUT_COLUMNS, plan.record_updates, key="pk")
    bulk.update_rows(
        session,
        Customer.__tablename__,
        ("last_leaf_hash",),
        # pk order. Record writers hold their customers FOR KEY SHARE, which this UPDATE
        # does not wait for (tests/journal/test_row_locks.py).
        [(tip, pk) for pk, tip in sorted(plan.tips.items())],
        key="pk",
    )
    return BatchPlan.of(batch)


def unfinished_batches(session_factory: sessionmaker[Session]) -> list[BatchPlan]:
    """Batches cut or sent but not yet seen mined, oldest first."""
    with reading(session_factory) as session:
        batches = session.scalars(
            select(Batch).where(Batch.status != BatchStatus.ANCHORED.value).order_by(Batch.id)
        )
        return [BatchPlan.of(b) for b in batches]


@dataclass(frozen=True, slots=True)
class Location:
    """Where the chain holds a batch: its anchor transaction and block."""

    batch_id: int
    epoch: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    gas_used: int | None


def mark_anchored(
    session_factory: sessionmaker[Session],
    *,
    batch_id: int,
    epoch: int,
    tx_hash: bytes,
    block_number: int,
    block_hash: bytes,
    gas_used: int | None,
) -> None:
    """Record where the chain holds the batch."""
    record_progress(
        session_factory,
        anchored=[Location(batch_id, epoch, tx_hash, block_number, block_hash, gas_used)],
    )


def record_progress(
    session_factory: sessionmaker[Session],
    *,
    anchored: Sequence[Location] = (),
    sent: tuple[int, bytes] | None = None,
    cut: CutPlan | None = None,
) -> BatchPlan | None:
    """In one transaction: where the chain holds each of `anchored`, (`sent`: batch id,
    transaction hash) the transaction that now carries a batch, and the next batch, which is
    returned: `cut` as planned (`plan_cut`), or cut afresh if the journal's last batch is no
    longer the one it was planned after. The anchorer writes a batch's sent mark with the
    previous batch's location and the next batch's cut: under load each write transaction
    waits its turn for SQLite's write lock behind the API's commits, once per batch instead of
    three times."""
    with session_factory() as session, session.begin():
        now = utcnow()
        for where in anchored:
            session.execute(
                update(Batch)
                .where(Batch.id == where.batch_id)
                .values(
                    status=BatchStatus.ANCHORED.value,
                    epoch=where.epoch,
                    tx_hash=where.tx_hash,
                    block_number=where.block_number,
                    block_hash=where.block_hash,
                    gas_used=where.gas_used,
                    anchored_at=now,
                )
            )
        if sent is not None:
            batch_id, tx_hash = sent
            outbox.mark_sent_in(session, Batch, Batch.id == batch_id, tx_hash=tx_hash)
        if cut is None:
            return None
        if _last_batch(session) == cut.after:
            return _write_cut(session, cut)
        return _cut(session, max_records=cut.max_records)


def recent_anchored_batches(
    session_factory: sessionmaker[Session], *, limit: int
) -> list[tuple[int, int, bytes]]:
    """(batch id, block number, block hash) of the newest anchored batches, newest first."""
    with reading(session_factory) as session:
        rows = session.execute(
            select(Batch.id, Batch.block_number, Batch.block_hash)
            .where(Batch.status == BatchStatus.ANCHORED.value)
            .order_by(Batch.id.desc())
            .limit(limit)
        ).all()
        return [(r.id, int(r.block_number), bytes(r.block_hash)) for r in rows]


def anchored_end(session_factory: sessionmaker[Session]) -> int:
    """The seq after the last batch the journal believes is on chain (0 when none is)."""
    with reading(session_factory) as session:
        end = session.scalar(
            select(func.max(Batch.first_seq + Batch.count)).where(
                Batch.status == BatchStatus.ANCHORED.value
            )
        )
        return int(end or 0)


def last_anchored_batch_id(session_factory: sessionmaker[Session]) -> int | None:
    """The id of the newest batch the journal holds as anchored (None when there is none)."""
    with reading(session_factory) as session:
        found = session.scalar(
            select(func.max(Batch.id)).where(Batch.status == BatchStatus.ANCHORED.value)
        )
        return int(found) if found is not None else None


def reset_batches_from(session_factory: sessionmaker[Session], *, first_seq: int) -> list[int]:
    """Forget the chain location of every batch from `first_seq` on: they will be re-anchored.

    Used when the chain rolled back. Seqs, roots and heads stay: the same batches go on chain
    again and reproduce the same heads.
    """
    with session_factory() as session, session.begin():
        ids = list(
            session.scalars(select(Batch.id).where(Batch.first_seq >= first_seq).order_by(Batch.id))
        )
        if ids:
            session.execute(
                update(Batch)
                .where(Batch.id.in_(ids))
                .values(status=BatchStatus.CUT.value, anchored_at=None, **outbox.UNSENT)
            )
        return ids
