"""A stuck anchor transaction on a real Anvil: automine off, the base fee raised above what it
offers, then mining on again. It is replaced under the same nonce; exactly one batch is anchored,
at the transaction that was mined, and every record's receipt verifies against the chain."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import select
from web3.exceptions import TransactionNotFound

from crm_ledger.chain.contract import SentTransaction
from crm_ledger.db.models import Batch, BatchStatus, Record
from crm_ledger.journal.receipts import build_receipt
from crm_ledger.ledger.receipts import Receipt
from crm_ledger.verifier.record import verify_record
from crm_ledger.workers import Supervisor
from tests.anchoring.fakes import add_records
from tests.indexer.conftest import AnvilChain, anvil_chain  # noqa: F401  (fixture)
from tests.waiting import until

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]


async def test_a_stuck_anchor_is_replaced_and_the_mined_one_recorded(
    anvil_chain: AnvilChain,  # noqa: F811
) -> None:
    chain = anvil_chain
    ids = add_records(chain.session_factory, customers=2, each=3)
    sent: list[SentTransaction] = []
    send = chain.ledger.send_anchor_transaction

    async def recording(*args: Any, **kwargs: Any) -> SentTransaction:
        transaction = await send(*args, **kwargs)
        sent.append(transaction)
        return transaction

    chain.ledger.send_anchor_transaction = recording  # type: ignore[method-assign]
    await chain.rpc("evm_setAutomine", False)
    anchorer = chain.anchorer(batch_max_records=10, anchor_replace_after_seconds=0.3)
    supervisor = Supervisor(engine=None, idle_seconds=0.02, max_backoff_seconds=0.5)
    supervisor.add(anchorer, singleton=False)
    await supervisor.start()
    try:
        await until(lambda: sent, 30, what="the first anchor transaction")
        original = sent[0]
        # Fees rise: the next block's base fee is above what the original offers, so the
        # block that is mined leaves it out.
        await chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(original.fees.max_fee_per_gas * 3))
        await chain.rpc("evm_mine")
        block = await chain.w3.eth.get_block("latest")
        assert int(block["baseFeePerGas"]) > original.fees.max_fee_per_gas
        assert len(block["transactions"]) == 0
        await until(lambda: len(sent) >= 3, 30, what="two replacements")
        await chain.rpc("evm_setAutomine", True)
        await chain.rpc("evm_mine")
        await until(lambda: anchorer.stats.last_batch_id is not None, 30, what="the batch")
    finally:
        await supervisor.stop()
        await chain.rpc("evm_setAutomine", True)

    assert {transaction.nonce for transaction in sent} == {original.nonce}
    for earlier, later in itertools.pairwise(sent):
        assert later.fees.max_fee_per_gas * 8 >= earlier.fees.max_fee_per_gas * 9
        assert later.fees.max_priority_fee_per_gas * 8 >= earlier.fees.max_priority_fee_per_gas * 9
    assert await chain.ledger.batch_count() == 1
    assert await chain.ledger.next_seq() == len(ids)
    with chain.session_factory() as session:
        [batch] = session.scalars(select(Batch)).all()
        assert batch.status == BatchStatus.ANCHORED.value
        assert batch.tx_hash is not None
        mined = await chain.w3.eth.get_transaction_receipt(batch.tx_hash)
        assert mined["status"] == 1 and bytes(mined["blockHash"]) == batch.block_hash
        assert batch.tx_hash in {transaction.tx_hash for transaction in sent[1:]}
        event = await chain.ledger.find_batch_event(0)
        assert event is not None and event.tx_hash == batch.tx_hash
        for other in sent:
            if other.tx_hash != batch.tx_hash:
                with pytest.raises(TransactionNotFound):
                    await chain.w3.eth.get_transaction_receipt(other.tx_hash)
        records = session.scalars(select(Record).order_by(Record.seq)).all()
        assert sorted(r.id for r in records) == sorted(ids)
        for record in records:
            receipt = Receipt.from_json(build_receipt(session, record))
            customer_key = record.customer.key
            check = await verify_record(
                receipt=receipt,
                content=record.content,
                key=customer_key,
                chain=chain.ledger,
                expected_contract=chain.deployment.address,
            )
            assert check.verdict == "valid", check
