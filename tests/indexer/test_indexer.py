"""The indexer on a real Anvil: events into the view, feed events, balances, idempotency."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from sqlalchemy import event, func, select

from crm_ledger.db.models import (
    Batch,
    FeedEvent,
    IndexedBalance,
    IndexedBatch,
    IndexedTokenEvent,
    IndexerStream,
    Record,
)
from crm_ledger.db.session import READ_ONLY
from crm_ledger.indexer import events, store
from tests.anchoring.fakes import add_records
from tests.indexer.conftest import AnvilChain

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]


async def test_batches_are_indexed_with_one_feed_event_per_record(anvil_chain: AnvilChain) -> None:
    add_records(anvil_chain.session_factory, customers=3, each=5)
    await anvil_chain.anchor()
    await anvil_chain.index()
    with anvil_chain.session_factory() as session:
        journal = session.execute(
            select(Batch.id, Batch.first_seq, Batch.count, Batch.root, Batch.tx_hash)
        ).all()
        indexed = session.execute(
            select(
                IndexedBatch.batch_id,
                IndexedBatch.first_seq,
                IndexedBatch.count,
                IndexedBatch.root,
                IndexedBatch.tx_hash,
            )
        ).all()
        assert sorted(journal) == sorted(indexed)
        events = session.scalars(select(FeedEvent).order_by(FeedEvent.pk)).all()
        assert [e.type for e in events] == ["record.anchored"] * 15
        record_ids = set(session.scalars(select(Record.id)))
        assert {json.loads(e.payload)["record_id"] for e in events} == record_ids
        stream = session.scalars(select(IndexerStream)).one()
        assert stream.next_block == await anvil_chain.head() + 1


async def test_token_events_and_balances_are_indexed(anvil_chain: AnvilChain) -> None:
    token = await anvil_chain.deploy_token()
    alice, bob = "0x" + "aa" * 20, "0x" + "bb" * 20
    campaign = b"\x01" * 32
    await token.issue(campaign, [(b"\x10" * 32, alice, 100), (b"\x11" * 32, bob, 7)])
    await token.redeem(b"\x20" * 32, alice, 30, b"\x99" * 32)
    await token.expire(b"\x21" * 32, bob, 7, b"\x98" * 32)
    await anvil_chain.index()
    with anvil_chain.session_factory() as session:
        kinds = session.scalars(
            select(IndexedTokenEvent.event).order_by(IndexedTokenEvent.pk)
        ).all()
        assert sorted(kinds) == sorted(
            ["issued", "redeemed", "expired", "issued"] + ["transfer"] * 4
        )
        balances = dict(
            session.execute(select(IndexedBalance.address, IndexedBalance.balance)).tuples().all()
        )
        assert balances == {alice: 70, bob: 0}
        assert balances[alice] == await token.balance_of(alice)
        types = session.scalars(select(FeedEvent.type).order_by(FeedEvent.pk)).all()
        assert types == ["reward.issued", "reward.issued", "reward.redeemed", "reward.expired"]


async def test_indexing_again_adds_nothing(anvil_chain: AnvilChain) -> None:
    add_records(anvil_chain.session_factory, customers=2, each=3)
    await anvil_chain.anchor()
    indexer = await anvil_chain.index()
    assert not await indexer.step()
    with anvil_chain.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(IndexedBatch)) == 2
        assert session.scalar(select(func.count()).select_from(FeedEvent)) == 6


async def test_after_a_rollback_the_stats_show_the_cursor_at_the_fork(
    anvil_chain: AnvilChain,
) -> None:
    """/readyz's indexed_through follows the rollback at once, not only the next range read."""
    add_records(anvil_chain.session_factory, customers=1, each=2)
    await anvil_chain.anchor(batch_max_records=1)
    snapshot = await anvil_chain.rpc("evm_snapshot")
    fork = await anvil_chain.head() + 1
    add_records(anvil_chain.session_factory, customers=1, each=2)
    await anvil_chain.anchor(batch_max_records=1)
    indexer = await anvil_chain.index()
    assert indexer.stats.indexed_through == await anvil_chain.head() > fork
    assert await anvil_chain.rpc("evm_revert", snapshot) is True
    await anvil_chain.mine(5)  # other blocks at the orphaned heights

    assert await indexer.step()  # the reorg check: rolled back, nothing read yet

    assert indexer.stats.reorgs == 1
    assert indexer.stats.indexed_through == fork - 1


async def test_a_range_of_many_records_is_stored_in_parts_with_the_same_result(
    anvil_chain: AnvilChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):  # three batches, three blocks, one range for the indexer
        add_records(anvil_chain.session_factory, customers=2, each=2)
        await anvil_chain.anchor()
    applied: list[tuple[int, int]] = []
    apply_range = store.apply_range

    def counted(*args: Any, **kwargs: Any) -> Any:
        applied.append((kwargs["from_block"], kwargs["to_block"]))
        return apply_range(*args, **kwargs)

    monkeypatch.setattr(events, "APPLY_MAX_RECORDS", 4)
    monkeypatch.setattr(store, "apply_range", counted)
    await anvil_chain.index()

    head = await anvil_chain.head()
    assert len(applied) == 3, applied
    assert applied[-1][1] == head
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(applied)), applied
    with anvil_chain.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(IndexedBatch)) == 3
        payloads = [
            json.loads(p) for p in session.scalars(select(FeedEvent.payload).order_by(FeedEvent.pk))
        ]
        assert len(payloads) == 12
        assert [p["seq"] for p in payloads] == sorted(p["seq"] for p in payloads)
        assert {p["record_id"] for p in payloads} == set(session.scalars(select(Record.id)))
        stream = session.scalars(select(IndexerStream)).one()
        assert stream.next_block == head + 1


async def test_the_records_of_a_range_are_read_before_its_write_transaction(
    anvil_chain: AnvilChain,
) -> None:
    """The feed events of anchored records are worked out in a read-only transaction: the
    write transaction (on SQLite, the one write lock the API's commits queue for) only stores
    them, and stores the same events as before (one per record, in seq order)."""
    add_records(anvil_chain.session_factory, customers=2, each=3)
    await anvil_chain.anchor()
    engine = anvil_chain.session_factory.kw["bind"]
    reads_of_records: list[bool] = []

    def seen(conn: Any, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and " records" in statement:
            reads_of_records.append(bool(conn.get_execution_options().get(READ_ONLY)))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        await anvil_chain.index()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert reads_of_records and all(reads_of_records), reads_of_records
    with anvil_chain.session_factory() as session:
        payloads = [
            json.loads(p) for p in session.scalars(select(FeedEvent.payload).order_by(FeedEvent.pk))
        ]
        assert [p["seq"] for p in payloads] == list(range(6))
        assert {p["record_id"] for p in payloads} == set(session.scalars(select(Record.id)))
