"""The anchorer's pipeline: the next batch is cut while the previous one is sent and mined, one
step anchors every due batch in order, and a failure mid-pipeline loses or repeats nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring import batches
from crm_ledger.anchoring.anchorer import Anchorer
from crm_ledger.anchoring.batches import BatchPlan
from crm_ledger.chain.contract import Fees, SentTransaction
from crm_ledger.db.models import Batch, Record
from crm_ledger.errors import ChainUnavailable
from crm_ledger.verifier.chain import BatchAnchoredEvent
from tests.anchoring.fakes import FakeChain, add_records
from tests.anchoring.test_anchorer import (
    SimulatedCrash,
    assert_ledger_consistent,
    drain,
    make_anchorer,
)


@dataclass
class MinesOnceTheNextIsCut(FakeChain):
    """A node whose block for batch n comes only once the journal holds batch n + 1 (or no
    more records are pending): a stop-and-wait anchorer would wait on it forever."""

    session_factory: sessionmaker[Session] | None = None

    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None:
        assert self.session_factory is not None
        if any(tx.sent.tx_hash == tx_hash for tx in self.mempool.values()):
            with self.session_factory() as session:
                cut = session.scalar(select(func.count()).select_from(Batch)) or 0
                pending = session.scalar(
                    select(func.count()).select_from(Record).where(Record.seq.is_(None))
                )
            if cut > len(self.events) + 1 or not pending:
                self.mine()
        return await super().receipt(tx_hash)


@dataclass
class FailsOnSend(FakeChain):
    """A node that goes down when asked to take the `fail_at`-th anchor transaction."""

    fail_at: int = 2
    attempts: int = 0

    async def send_anchor_transaction(
        self,
        first_seq: int,
        count: int,
        root: bytes,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
    ) -> SentTransaction:
        self.attempts += 1
        if self.attempts == self.fail_at:
            self.down = True
        return await super().send_anchor_transaction(first_seq, count, root, nonce=nonce, fees=fees)


def batch_ids(session_factory: sessionmaker[Session]) -> list[tuple[int, str]]:
    with session_factory() as session:
        return [(b.id, b.status) for b in session.scalars(select(Batch).order_by(Batch.id))]


@pytest.mark.asyncio
async def test_one_step_anchors_every_due_batch_in_order(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=3, each=4)
    chain = FakeChain()
    assert await make_anchorer(session_factory, chain, tmp_path).step() == 3
    assert [(e.first_seq, e.count) for e in chain.events] == [(0, 4), (4, 4), (8, 4)]
    assert chain.sent == 3
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_one_write_per_batch_records_it_sent_the_previous_one_anchored_and_cuts_the_next(
    session_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One write transaction per batch, not three (cut, sent, anchored): under load each
    waits its turn for SQLite's write lock behind the API's commits."""
    add_records(session_factory, customers=3, each=4)
    writes: list[tuple[list[int], int | None, int | None]] = []
    record_progress = batches.record_progress

    def recording(
        factory: sessionmaker[Session],
        *,
        anchored: Sequence[batches.Location] = (),
        sent: tuple[int, bytes] | None = None,
        cut: batches.CutPlan | None = None,
    ) -> BatchPlan | None:
        # The cut was worked out before the write (outside SQLite's write lock).
        assert cut is None or cut in plans
        written = record_progress(factory, anchored=anchored, sent=sent, cut=cut)
        writes.append(
            (
                [where.batch_id for where in anchored],
                None if sent is None else sent[0],
                None if written is None else written.id,
            )
        )
        return written

    plans: list[batches.CutPlan] = []
    plan_cut = batches.plan_cut

    def planning(factory: sessionmaker[Session], *, max_records: int) -> batches.CutPlan | None:
        plan = plan_cut(factory, max_records=max_records)
        if plan is not None:
            plans.append(plan)
        return plan

    monkeypatch.setattr(batches, "record_progress", recording)
    monkeypatch.setattr(batches, "plan_cut", planning)
    assert await make_anchorer(session_factory, FakeChain(), tmp_path).step() == 3
    # (anchored, sent, cut): batch 0 was cut alone, at the start of the step.
    assert writes == [([], None, 0), ([], 0, 1), ([0], 1, 2), ([1], 2, None), ([2], None, None)]
    assert [plan.batch.id for plan in plans] == [0, 1, 2]
    assert batch_ids(session_factory) == [(0, "anchored"), (1, "anchored"), (2, "anchored")]


@pytest.mark.asyncio
async def test_a_planned_cut_is_worked_out_again_if_another_batch_was_cut_meanwhile(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """The anchorer works a batch out before the write that cuts it; should the journal have
    moved on in between (only another cut can move it), the write cuts afresh."""
    add_records(session_factory, customers=2, each=3)
    plan = batches.plan_cut(session_factory, max_records=4)
    assert plan is not None and (plan.batch.id, plan.batch.count) == (0, 4)
    first = batches.cut_batch(session_factory, max_records=2)
    again = batches.record_progress(session_factory, cut=plan)
    assert first is not None and (first.id, first.first_seq, first.count) == (0, 0, 2)
    assert again is not None and (again.id, again.first_seq, again.count) == (1, 2, 4)
    # Planned and written with nothing in between: the same batch a cut in one go makes.
    add_records(session_factory, customers=1, each=2)
    planned = batches.plan_cut(session_factory, max_records=10)
    assert batches.plan_cut(session_factory, max_records=10) is not None  # reading writes nothing
    written = batches.record_progress(session_factory, cut=planned)
    assert written is not None and (written.id, written.first_seq, written.count) == (2, 6, 2)
    assert batches.plan_cut(session_factory, max_records=10) is None
    # Seqs contiguous, every leaf linked to its customer's previous one, heads chained.
    chain = FakeChain()
    assert await make_anchorer(session_factory, chain, tmp_path).step() == 3
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_the_next_batch_is_cut_while_the_previous_one_waits_to_be_mined(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=3, each=4)
    chain = MinesOnceTheNextIsCut(automine=False, session_factory=session_factory)
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    # Stop-and-wait would wait for batch 0's block until the replacement timeout (30 s).
    assert await asyncio.wait_for(anchorer.step(), timeout=10) == 3
    assert chain.sent == 3
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_the_chain_going_down_mid_pipeline_loses_and_repeats_nothing(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=4, each=4)
    chain = FailsOnSend(fail_at=2)
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    with pytest.raises(ChainUnavailable):
        await anchorer.step()
    # Batch 0 anchored; batch 1 was cut (and batch 2 cut ahead while batch 0 was in flight or
    # not): nothing after the failure was sent.
    assert len(chain.events) == 1
    assert batch_ids(session_factory)[0] == (0, "anchored")
    assert all(status == "cut" for _, status in batch_ids(session_factory)[1:])
    chain.down = False
    await drain(anchorer)
    assert [e.first_seq for e in chain.events] == [0, 4, 8, 12]
    assert chain.sent == len(chain.events)
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
@pytest.mark.parametrize("crash_at", ["sent", "marked_sent", "mined", "anchored"])
async def test_a_crash_mid_pipeline_is_finished_by_the_next_process(
    session_factory: sessionmaker[Session], tmp_path: Path, crash_at: str
) -> None:
    add_records(session_factory, customers=3, each=4)
    chain = FakeChain()
    seen: list[str] = []

    def crash_in_second_batch(step: str) -> None:
        seen.append(step)
        if step == crash_at and seen.count(crash_at) == 2:
            raise SimulatedCrash(step)

    with pytest.raises(SimulatedCrash):
        await make_anchorer(
            session_factory, chain, tmp_path, checkpoint=crash_in_second_batch
        ).step()
    # Batch 1's location is written with batch 2's sent mark: its "anchored" comes after that.
    assert chain.sent == (3 if crash_at == "anchored" else 2)
    restarted: Anchorer = make_anchorer(session_factory, chain, tmp_path)
    await drain(restarted)
    # A batch that reached the chain before the crash is adopted, never sent twice.
    assert chain.sent == len(chain.events) == 3
    assert_ledger_consistent(session_factory, chain)


@dataclass
class RollsBackAfterFirstReceipt(FakeChain):
    """A node that loses batch 0 (a rollback) just after the anchorer read its receipt."""

    rolled_back: bool = False

    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None:
        found = await super().receipt(tx_hash)
        if found is not None and found.batch_id == 0 and not self.rolled_back:
            self.rolled_back = True
            self.roll_back_to(0)
        return found


@pytest.mark.asyncio
async def test_a_batch_the_chain_lost_after_its_receipt_is_never_written_anchored(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Batch 0's location waits for batch 1's sent mark; before sending batch 1 the anchorer
    finds the chain behind it: batch 0 must not be written as anchored where the chain lost
    it (receipts would be answered for a batch no chain holds), and is anchored again."""
    add_records(session_factory, customers=2, each=4)
    chain = RollsBackAfterFirstReceipt()
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    assert await anchorer.step() == 0  # batch 1 rejected: the chain is behind it
    assert chain.rolled_back and chain.events == []
    assert [status for _, status in batch_ids(session_factory)] == ["sent", "cut"]
    await drain(anchorer)
    assert [e.first_seq for e in chain.events] == [0, 4]
    assert_ledger_consistent(session_factory, chain)
