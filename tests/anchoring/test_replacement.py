"""Stuck anchor transactions on a fake node with a mempool: replaced under the same nonce with
fees raised by the configured step, up to the cap; whichever one is mined is recorded, once."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring import anchorer as anchorer_module
from crm_ledger.anchoring.anchorer import Anchorer
from crm_ledger.anchoring.fees import first_fees, gwei_to_wei, replacement_fees
from crm_ledger.chain.contract import Fees
from crm_ledger.db.models import Batch, BatchStatus
from crm_ledger.errors import AnchorFeeCapReached
from tests.anchoring.fakes import GWEI, FakeChain, add_records, fast_settings
from tests.anchoring.test_anchorer import DEPLOYMENT, assert_ledger_consistent, drain
from tests.waiting import until
from tests.workers.helpers import supervised


def stuck_anchorer(
    session_factory: sessionmaker[Session], chain: FakeChain, tmp_path: Path, **settings: object
) -> Anchorer:
    """An anchorer that replaces a transaction not mined within 20 ms."""
    values: dict[str, object] = {
        "batch_max_records": 10,
        "anchor_replace_after_seconds": 0.02,
        "anchor_max_fee_per_gas_gwei": 1000,
    }
    values.update(settings)
    return Anchorer(
        session_factory=session_factory,
        chain=chain,
        deployment=DEPLOYMENT,
        settings=fast_settings(tmp_path, **values),
    )


def batch_rows(session_factory: sessionmaker[Session]) -> list[Batch]:
    with session_factory() as session:
        return list(session.scalars(select(Batch).order_by(Batch.id)))


@pytest.mark.parametrize(
    ("previous", "market", "expected", "desc"),
    [
        (Fees(800, 80), Fees(10, 1), Fees(900, 90), "12.5 % above the stuck one"),
        (Fees(801, 81), Fees(10, 1), Fees(902, 92), "rounded up, never below 12.5 %"),
        (Fees(800, 80), Fees(5000, 200), Fees(5000, 200), "the market when it asks more"),
        (Fees(0, 0), Fees(0, 0), Fees(1, 1), "at least 1 wei more, even from zero"),
        (Fees(100, 99), Fees(0, 0), Fees(113, 112), "the max fee covers the priority fee"),
    ],
)
def test_replacement_fees(previous: Fees, market: Fees, expected: Fees, desc: str) -> None:
    got = replacement_fees(previous, market, bump_percent=12.5, cap_wei=10**6, tx_label="tx")
    assert got == expected, desc
    assert got.max_fee_per_gas * 8 >= previous.max_fee_per_gas * 9
    assert got.max_priority_fee_per_gas * 8 >= previous.max_priority_fee_per_gas * 9


def test_no_fee_above_the_cap() -> None:
    with pytest.raises(AnchorFeeCapReached) as raised:
        replacement_fees(
            Fees(900, 90), Fees(10, 1), bump_percent=12.5, cap_wei=1000, tx_label="tx 0xab"
        )
    assert (raised.value.needed_wei, raised.value.cap_wei) == (1013, 1000)
    assert "tx 0xab" in str(raised.value)
    assert "CRM_LEDGER_ANCHOR_MAX_FEE_PER_GAS_GWEI" in str(raised.value)
    assert replacement_fees(
        Fees(888, 88), Fees(10, 1), bump_percent=12.5, cap_wei=999, tx_label="tx"
    ) == Fees(999, 99)
    with pytest.raises(AnchorFeeCapReached):
        first_fees(Fees(1001, 1), cap_wei=1000)
    assert first_fees(Fees(1000, 1), cap_wei=1000) == Fees(1000, 1)
    assert gwei_to_wei(1.5) == 1_500_000_000


@pytest.mark.asyncio
async def test_a_stuck_anchor_is_replaced_under_its_nonce_until_one_is_mined(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=3)
    chain = FakeChain(automine=False, base_fee=GWEI, priority_fee=GWEI)
    anchorer = stuck_anchorer(session_factory, chain, tmp_path)
    async with supervised(anchorer):
        await until(lambda: len(chain.transactions) >= 4, what="three replacements")
        # Fees rose past what the first three offer: the next block includes only the fourth or
        # a later replacement.
        chain.base_fee = chain.transactions[2].sent.fees.max_fee_per_gas + 1
        chain.mine()
        await until(lambda: anchorer.stats.last_batch_id is not None, what="the batch anchored")

    sent = [tx.sent for tx in chain.transactions]
    assert {tx.nonce for tx in sent} == {0}, "every replacement reuses the stuck nonce"
    for earlier, later in itertools.pairwise(sent):
        assert later.fees.max_fee_per_gas * 8 >= earlier.fees.max_fee_per_gas * 9
        assert later.fees.max_priority_fee_per_gas * 8 >= earlier.fees.max_priority_fee_per_gas * 9
    assert len(chain.events) == 1, "anchored exactly once"
    [row] = batch_rows(session_factory)
    assert row.status == BatchStatus.ANCHORED.value
    assert row.tx_hash == chain.events[0].tx_hash
    assert row.tx_hash in {tx.tx_hash for tx in sent[3:]}
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_an_earlier_transaction_mined_elsewhere_is_the_one_recorded(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=2)
    chain = FakeChain(automine=False)
    anchorer = stuck_anchorer(session_factory, chain, tmp_path)
    step = asyncio.create_task(anchorer.step())
    await until(lambda: len(chain.transactions) >= 3, interval=0.005)
    first = chain.transactions[0].sent.tx_hash
    chain.mine_transaction(first)  # another node still had the original
    await step
    [row] = batch_rows(session_factory)
    assert (row.status, row.tx_hash) == (BatchStatus.ANCHORED.value, first)
    assert len(chain.events) == 1
    await drain(anchorer)
    assert len(chain.events) == 1
    assert_ledger_consistent(session_factory, chain)


@pytest.mark.asyncio
async def test_at_the_cap_the_anchorer_waits_saying_so_then_finishes(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=2)
    # 2 gwei + 1 gwei asked; the cap of 4 gwei allows two replacements (3.375, 3.8 gwei); no
    # block comes until the test mines one.
    chain = FakeChain(automine=False, base_fee=GWEI, priority_fee=GWEI)
    anchorer = stuck_anchorer(session_factory, chain, tmp_path, anchor_max_fee_per_gas_gwei=4)
    async with supervised(anchorer) as supervisor:

        def status() -> dict[str, Any]:
            return supervisor.status()["anchorer"]

        await until(
            lambda: "CRM_LEDGER_ANCHOR_MAX_FEE_PER_GAS_GWEI" in status()["message"],
            what="the fee cap reported",
        )
        assert status()["state"] == "backing_off", "it waits: writes still commit"
        assert "nothing is lost" in status()["message"]
        assert [tx.sent.fees.max_fee_per_gas for tx in chain.transactions] == [
            3 * GWEI,
            3_375_000_000,
            3_796_875_000,
        ]
        await asyncio.sleep(0.2)  # it keeps waiting: no new nonce, no fee over the cap
        assert len(chain.transactions) == 3
        chain.mine()  # the last replacement is mined at last
        await until(lambda: anchorer.stats.last_batch_id is not None, what="the batch anchored")
    [row] = batch_rows(session_factory)
    assert row.tx_hash == chain.transactions[-1].sent.tx_hash == chain.events[0].tx_hash


@pytest.mark.asyncio
async def test_a_replacement_sent_but_not_recorded_before_a_crash_is_never_followed(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=2)
    chain = FakeChain(automine=False)

    def crash(step: str) -> None:
        if step == "sent" and len(chain.transactions) == 2:
            raise asyncio.CancelledError  # killed between sending and recording

    anchorer = stuck_anchorer(session_factory, chain, tmp_path)
    anchorer.checkpoint = crash
    with pytest.raises(asyncio.CancelledError):
        await anchorer.step()
    [row] = batch_rows(session_factory)
    assert row.tx_hash == chain.transactions[0].sent.tx_hash  # the node forgot this one
    unrecorded = chain.transactions[1].sent

    restarted = stuck_anchorer(session_factory, chain, tmp_path)
    async with supervised(restarted) as supervisor:
        # Sent again under the same nonce at today's fees, it is refused as underpriced (the
        # unrecorded replacement offers more): it waits, never taking the next nonce.
        await until(
            lambda: supervisor.status()["anchorer"]["state"] == "backing_off",
            what="the refused send backed off",
        )
        assert "underpriced" in supervisor.status()["anchorer"]["message"]
        chain.mine()  # the unrecorded replacement is mined
        await until(lambda: restarted.stats.last_batch_id is not None, what="the batch anchored")
    assert {tx.sent.nonce for tx in chain.transactions} == {0}
    assert len(chain.events) == 1
    assert batch_rows(session_factory)[0].tx_hash == unrecorded.tx_hash == chain.events[0].tx_hash


@pytest.mark.asyncio
async def test_a_restarted_anchorer_replaces_the_stuck_transaction_not_a_new_nonce(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    add_records(session_factory, customers=1, each=2)
    chain = FakeChain(automine=False)
    first = asyncio.create_task(stuck_anchorer(session_factory, chain, tmp_path).step())

    def replacement_recorded() -> bool:
        rows = batch_rows(session_factory)
        return (
            len(chain.transactions) > 1
            and bool(rows)
            and (rows[0].tx_hash == chain.transactions[1].sent.tx_hash)
        )

    await until(replacement_recorded, interval=0.005)
    first.cancel()  # the process dies while its replacement waits in the mempool
    with pytest.raises(asyncio.CancelledError):
        await first
    [row] = batch_rows(session_factory)
    assert row.status == BatchStatus.SENT.value
    assert row.tx_hash == chain.transactions[-1].sent.tx_hash

    restarted = stuck_anchorer(session_factory, chain, tmp_path)
    step = asyncio.create_task(restarted.step())
    await until(lambda: len(chain.transactions) >= 3, interval=0.005)
    chain.mine()
    await step
    assert {tx.sent.nonce for tx in chain.transactions} == {0}
    [row] = batch_rows(session_factory)
    assert (row.status, row.tx_hash) == (BatchStatus.ANCHORED.value, chain.events[0].tx_hash)
    assert len(chain.events) == 1


@pytest.mark.asyncio
async def test_an_anchor_the_node_forgot_is_sent_again_without_waiting_to_replace_it(
    session_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback (`evm_revert`) or a reorg drops the pending anchor from the node: the anchorer
    sees that within a check interval and sends it again, instead of waiting out the whole
    replace-after time (here 10 minutes) for a transaction that can never be mined."""
    monkeypatch.setattr(anchorer_module, "FORGOTTEN_CHECK_SECONDS", 0.02)
    add_records(session_factory, customers=1, each=2)
    chain = FakeChain(automine=False)
    anchorer = stuck_anchorer(session_factory, chain, tmp_path, anchor_replace_after_seconds=600)
    async with supervised(anchorer):
        await until(lambda: len(chain.transactions) == 1, what="the anchor sent")
        forgotten = chain.transactions[0].sent
        chain.mempool.clear()  # the node forgets it
        await until(lambda: len(chain.transactions) == 2, what="the anchor sent again")
        again = chain.transactions[1].sent
        assert again.nonce == forgotten.nonce == 0, "under the account's next nonce"
        chain.mine()
        await until(lambda: anchorer.stats.last_batch_id is not None, what="the batch anchored")
    [row] = batch_rows(session_factory)
    assert row.tx_hash == again.tx_hash == chain.events[0].tx_hash
    assert len(chain.events) == 1
    assert_ledger_consistent(session_factory, chain)
