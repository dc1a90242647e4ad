"""`verifier.rpc.JsonRpcChain` (httpx + eth_abi) reads exactly what `chain.client.LedgerChain`
(web3) reads, on Anvil and on Hardhat; errors name the node without its path or query."""

from __future__ import annotations

import pytest

from crm_ledger.chain.client import LedgerChain
from crm_ledger.chain.node import LocalNode
from crm_ledger.errors import ChainUnavailable
from crm_ledger.verifier import rpc
from crm_ledger.verifier.chain import EMPTY_CODE_HASH
from tests.chain.conftest import free_port, some_root

pytestmark = pytest.mark.chain


@pytest.mark.asyncio
async def test_json_rpc_reads_match_web3_reads(ledger: LedgerChain, node: LocalNode) -> None:
    assert ledger.address is not None
    mined = []
    for first_seq, count in ((0, 3), (3, 2)):
        tx_hash = await ledger.send_anchor(first_seq, count, some_root(f"batch {first_seq}"))
        found = await ledger.wait_for_receipt(tx_hash, timeout=30)
        assert found is not None
        mined.append(found)

    async with rpc.connect(node.rpc_url, ledger.address, timeout=10) as chain:
        assert await chain.chain_id() == await ledger.chain_id()
        assert await chain.genesis_hash() == await ledger.genesis_hash()
        assert await chain.code_hash(ledger.address) == await ledger.code_hash(ledger.address)
        assert await chain.code_hash("0x" + "00" * 19 + "01") == EMPTY_CODE_HASH
        assert await chain.next_seq() == await ledger.next_seq() == 5
        assert await chain.head() == await ledger.head()
        assert await chain.batch_count() == await ledger.batch_count() == 2
        for batch_id in (0, 1):
            ours, theirs = await chain.batch(batch_id), await ledger.batch(batch_id)
            assert ours is not None and theirs is not None
            assert (ours.first_seq, ours.count, ours.root) == (
                theirs.first_seq,
                theirs.count,
                theirs.root,
            )
        assert await chain.batch(7) is None and await ledger.batch(7) is None
        assert await chain.find_batch_event(7) is None

        web3_events = await ledger.batch_events(0)
        ours_events = await chain.batch_events(0)
        key = (
            "batch_id",
            "first_seq",
            "count",
            "root",
            "head",
            "tx_hash",
            "block_number",
            "block_hash",
        )
        assert [tuple(getattr(e, k) for k in key) for e in ours_events] == [
            tuple(getattr(e, k) for k in key) for e in web3_events
        ]
        event = await chain.find_batch_event(1)
        assert event is not None and event.tx_hash == mined[1].tx_hash
        receipt = await chain.receipt(mined[0].tx_hash)
        assert receipt is not None and (receipt.batch_id, receipt.head) == (
            mined[0].batch_id,
            mined[0].head,
        )
        assert await chain.receipt(b"\x01" * 32) is None
        block = await chain.block_hash(mined[0].block_number)
        assert block == mined[0].block_hash
        assert await chain.block_hash(10**9) is None


@pytest.mark.asyncio
async def test_an_unreachable_node_is_chain_unavailable_naming_only_the_host() -> None:
    url = f"http://127.0.0.1:{free_port()}/secret-api-key?token=hunter2"
    async with rpc.connect(url, "0x" + "00" * 20, timeout=2) as chain:
        with pytest.raises(ChainUnavailable) as failed:
            await chain.chain_id()
    assert "secret-api-key" not in str(failed.value) and "hunter2" not in str(failed.value)
    assert f"127.0.0.1:{url.split(':')[2].split('/')[0]}" in str(failed.value)
