"""The anchorer against a fake chain: batching, chain down, crashes at every step, rollbacks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.db.models import Batch, BatchStatus, Customer, Record
from crm_ledger.errors import ChainReset, ChainUnavailable
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import LeafInput, RecordKind
from tests.anchoring.fakes import ADDRESS, CODE_HASH, FakeChain, add_records, fast_settings
from tests.spying import record_calls
from tests.waiting import until
from tests.workers.helpers import supervised

DEPLOYMENT = DeploymentRef(epoch=1, address=ADDRESS, code_hash=CODE_HASH, block_number=0)


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing in the anchorer may catch it."""


def make_anchorer(
    session_factory: sessionmaker[Session], chain: FakeChain, tmp_path: Path, **kw: object
) -> Anchorer:
    return Anchorer(
        session_factory=session_factory,
        chain=chain,
        deployment=DEPLOYMENT,
        settings=fast_settings(tmp_path),
        **kw,  # type: ignore[arg-type]
    )


async def drain(anchorer: Anchorer, rounds: int = 50) -> None:
    """Step until a round does no work."""
    for _ in range(rounds):
        if not await anchorer.step():
            return
    raise AssertionError("anchorer still busy after 50 rounds")


def assert_ledger_consistent(session_factory: sessionmaker[Session], chain: FakeChain) -> None:
    """Journal and chain agree; seqs contiguous, each once; leaves and hash chains recompute."""
    with session_factory() as session:
        records = session.scalars(select(Record).order_by(Record.seq)).all()
        batches = session.scalars(select(Batch).order_by(Batch.id)).all()
        assert [r.seq for r in records] == list(range(len(records)))
        tips: dict[int, bytes] = {}
        for r in records:
            assert r.seq is not None and r.leaf_hash is not None
            expected_previous = tips.get(r.customer_pk, merkle.ZERO_HASH)
            assert r.previous_leaf_hash == expected_previous
            leaf = LeafInput(
                seq=r.seq,
                kind=RecordKind(r.kind),
                commitment=r.commitment,
                previous_leaf_hash=expected_previous,
            )
            assert leaf.leaf_hash() == r.leaf_hash
            tips[r.customer_pk] = r.leaf_hash
        for customer in session.scalars(select(Customer)):
            assert customer.last_leaf_hash == tips.get(customer.pk)
        head = merkle.ZERO_HASH
        for batch in batches:
            members = [r for r in records if r.batch_id == batch.id]
            assert [r.seq for r in members] == list(
                range(batch.first_seq, batch.first_seq + batch.count)
            )
            assert batch.root == merkle.root([r.leaf_hash for r in members if r.leaf_hash])
            assert batch.previous_head == head
            head = merkle.next_head(head, batch.root, batch.first_seq, batch.count)
            assert batch.head == head
            assert batch.status == BatchStatus.ANCHORED.value
            event = chain.events[batch.id]
            assert (event.first_seq, event.count, event.root, event.head) == (
                batch.first_seq,
                batch.count,
                batch.root,
                batch.head,
            )
            assert (batch.tx_hash, batch.block_number, batch.block_hash) == (
                event.tx_hash,
                event.block_number,
                event.block_hash,
            )
        assert len(chain.events) == len(batches)


@pytest.mark.asyncio
async def test_batches_are_cut_by_size_and_anchored_in_order(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=3, each=3)
    chain = FakeChain()
    await drain(make_anchorer(session_factory, chain, tmp_path))
    assert [e.count for e in chain.events] == [4, 4, 1]
    assert chain.sent == 3
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_nothing_is_cut_before_the_batch_is_due(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=2)
    chain = FakeChain()
    anchorer = Anchorer(
        session_factory=session_factory,
        chain=chain,
        deployment=DEPLOYMENT,
        settings=fast_settings(tmp_path, batch_max_records=10, batch_max_age_seconds=3600),
    )
    assert await anchorer.step() == 0
    assert chain.events == []


@pytest.mark.asyncio
async def test_chain_down_keeps_records_queued_then_anchors_the_backlog(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    chain = FakeChain(down=True)
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    add_records(session_factory, customers=2, each=3)
    with pytest.raises(ChainUnavailable):
        await anchorer.step()
    async with supervised(anchorer) as supervisor:
        status = supervisor.status
        await until(lambda: status()["anchorer"]["state"] == "backing_off", what="back-off")
        assert "chain" in status()["anchorer"]["message"]
        add_records(session_factory, customers=1, each=2)  # writes keep landing while it is down
        chain.down = False
        await until(
            lambda: len(chain.events) == 2 and status()["anchorer"]["state"] == "running",
            what="the backlog anchored",
        )
    assert sum(e.count for e in chain.events) == 8
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
@pytest.mark.parametrize("crash_at", ["cut", "sent", "marked_sent", "mined", "anchored"])
async def test_a_crash_at_any_step_is_finished_by_the_next_process(
    session_factory: sessionmaker[Session], tmp_path: Path, crash_at: str
) -> None:
    add_records(session_factory, customers=2, each=5)
    chain = FakeChain()

    def crash(step: str) -> None:
        if step == crash_at:
            raise SimulatedCrash(step)

    with pytest.raises(SimulatedCrash):
        await drain(make_anchorer(session_factory, chain, tmp_path, checkpoint=crash))
    sent_before_restart = chain.sent
    await drain(make_anchorer(session_factory, chain, tmp_path))
    assert_ledger_consistent(session_factory, chain)
    # A batch that reached the chain before the crash is adopted, never sent twice.
    assert chain.sent == len(chain.events)
    # Batch 0's location is written with batch 1's sent mark: "anchored" comes after that send.
    assert sent_before_restart <= (2 if crash_at == "anchored" else 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("writes_meanwhile", [False, True])
async def test_rolled_back_batches_are_anchored_again(
    session_factory: sessionmaker[Session], tmp_path: Path, writes_meanwhile: bool
) -> None:
    """The same batches again, in order; with writes arriving meanwhile (the pipelined
    anchorer cuts new batches while it re-anchors), after them."""
    add_records(session_factory, customers=3, each=4)
    chain = FakeChain()
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    await drain(anchorer)
    heads_before = [e.head for e in chain.events]
    assert len(heads_before) == 3
    chain.roll_back_to(1)
    if writes_meanwhile:
        add_records(session_factory, customers=2, each=2)
    await drain(anchorer)
    assert [e.head for e in chain.events][:3] == heads_before
    assert sum(e.count for e in chain.events) == (16 if writes_meanwhile else 12)
    assert anchorer.stats.rollbacks_detected == 1
    if not writes_meanwhile:
        assert len(chain.events) == 3
        assert chain.sent == 5
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_rollback_to_genesis_with_new_records_keeps_every_seq(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=2, each=2)
    chain = FakeChain()
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    await drain(anchorer)
    chain.roll_back_to(0)
    add_records(session_factory, customers=1, each=3)
    await drain(anchorer)
    assert sum(e.count for e in chain.events) == 7
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_a_batch_remined_in_another_block_gets_its_new_location(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=4)
    chain = FakeChain()
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    await drain(anchorer)
    chain.remine_last()
    await anchorer.step()
    assert chain.sent == 1
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_a_reset_chain_halts_anchoring_and_says_what_to_run(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=2)
    chain = FakeChain(code_hash_value=b"\x00" * 32)
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    with pytest.raises(ChainReset, match="crm-ledger chain recover"):
        await anchorer.step()
    async with supervised(anchorer) as supervisor:
        await supervisor.wait()  # returns by itself: halted
        status = supervisor.status()["anchorer"]
    assert status["state"] == "halted"
    assert "crm-ledger chain recover" in status["message"]
    with session_factory() as session:
        assert session.scalars(select(Record).where(Record.seq.is_(None))).all() != []


@pytest.mark.asyncio
async def test_a_database_error_mid_step_is_retried_not_fatal(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=2, each=3)
    chain = FakeChain()
    failures = iter([True, False])

    def deadlock_once(step: str) -> None:
        if step == "marked_sent" and next(failures, False):
            raise OperationalError("UPDATE batches", {}, Exception("deadlock detected"))

    anchorer = make_anchorer(session_factory, chain, tmp_path, checkpoint=deadlock_once)

    def all_anchored() -> bool:
        with session_factory() as session:
            return session.scalars(
                select(Record).where(Record.seq.is_(None))
            ).first() is None and all(
                b.status == BatchStatus.ANCHORED.value for b in session.scalars(select(Batch))
            )

    async with supervised(anchorer) as supervisor:
        await until(all_anchored, what="every record anchored")
        await until(lambda: supervisor.status()["anchorer"]["state"] == "running")
        assert supervisor.status()["anchorer"]["items_handled"] >= 1
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_an_idle_anchorer_checks_the_chain_once_per_interval_and_before_any_work(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Stepped every `anchor_poll_seconds`, an anchorer with nothing to do asks the chain
    nothing until `anchor_idle_check_seconds` have passed; a rollback meanwhile is found at the
    next check, and a step with a batch to anchor checks the chain first, however soon."""
    add_records(session_factory, customers=3, each=4)
    chain = FakeChain()
    asked = record_calls(chain, "code_hash")
    anchorer = make_anchorer(session_factory, chain, tmp_path)
    anchorer.settings = fast_settings(tmp_path, anchor_idle_check_seconds=1.5)
    await drain(anchorer)
    assert len(chain.events) == 3
    after_work = len(asked)
    for _ in range(20):
        assert await anchorer.step() == 0
    assert len(asked) == after_work  # idle, within the interval: the chain is not asked

    chain.roll_back_to(1)
    assert await anchorer.step() == 0
    assert anchorer.stats.rollbacks_detected == 0  # not looked yet
    await asyncio.sleep(1.6)
    await drain(anchorer)
    assert anchorer.stats.rollbacks_detected == 1
    assert len(chain.events) == 3
    assert_ledger_consistent(session_factory, chain)

    # Work arrives right after a check: the rollback before it is found all the same.
    chain.roll_back_to(2)
    add_records(session_factory, customers=1, each=4)
    await drain(anchorer)
    assert anchorer.stats.rollbacks_detected == 2
    assert len(chain.events) == 4
    assert_ledger_consistent(session_factory, chain)
