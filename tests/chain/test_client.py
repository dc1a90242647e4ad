"""LedgerChain against real nodes (Anvil and Hardhat), a broken one, and one that is down."""

from __future__ import annotations

import asyncio
import re
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from eth_account import Account
from eth_utils.crypto import keccak

from crm_ledger.chain.client import (
    EMPTY_CODE_HASH,
    LedgerChain,
    make_async_web3,
    redact_url,
)
from crm_ledger.chain.node import LocalNode
from crm_ledger.chain.signer import dev_account
from crm_ledger.errors import AnchorRejected, ChainError, ChainUnavailable

from .conftest import RPC_TIMEOUT_SECONDS, free_port, some_root

ZERO_HEAD = bytes(32)


async def anchor(ledger: LedgerChain, first_seq: int, count: int, label: str) -> None:
    """Anchor one batch and wait until it is mined."""
    tx_hash = await ledger.send_anchor(first_seq, count, some_root(label))
    assert await ledger.wait_for_receipt(tx_hash, timeout=10) is not None


@pytest.mark.chain
@pytest.mark.asyncio
async def test_anchor_receipt_and_event(ledger: LedgerChain) -> None:
    assert (await ledger.next_seq(), await ledger.head(), await ledger.batch_count()) == (
        0,
        ZERO_HEAD,
        0,
    )

    tx_hash = await ledger.send_anchor(0, 3, some_root("a"))
    receipt = await ledger.wait_for_receipt(tx_hash, timeout=10)

    assert receipt is not None
    assert receipt.tx_hash == tx_hash
    assert (receipt.batch_id, receipt.first_seq, receipt.count) == (0, 0, 3)
    assert receipt.root == some_root("a")
    assert receipt.head == await ledger.head() != ZERO_HEAD
    assert receipt.block_hash == await ledger.block_hash(receipt.block_number)
    assert 60_000 < receipt.gas_used < 120_000
    assert await ledger.next_seq() == 3
    assert await ledger.batch_count() == 1
    stored = await ledger.batch(0)
    assert stored is not None and (stored.first_seq, stored.count) == (0, 3)
    assert stored.root == some_root("a")

    event = await ledger.find_batch_event(0)
    assert event is not None
    assert (event.tx_hash, event.block_number, event.block_hash) == (
        receipt.tx_hash,
        receipt.block_number,
        receipt.block_hash,
    )
    assert (event.first_seq, event.count, event.root, event.head) == (
        0,
        3,
        receipt.root,
        receipt.head,
    )
    assert event.gas_used == receipt.gas_used


@pytest.mark.chain
@pytest.mark.asyncio
async def test_batch_events_in_order_whatever_the_chunk_size(ledger: LedgerChain) -> None:
    for batch_id in range(4):
        await anchor(ledger, batch_id * 2, 2, f"batch {batch_id}")

    whole = await ledger.batch_events(0)
    one_block_at_a_time = await ledger.batch_events(0, chunk_blocks=1)

    assert [event.batch_id for event in whole] == [0, 1, 2, 3]
    assert one_block_at_a_time == whole
    assert [event.first_seq for event in whole] == [0, 2, 4, 6]
    later = await ledger.batch_events(whole[2].block_number)
    assert [event.batch_id for event in later] == [2, 3]
    assert await ledger.find_batch_event(0, from_block=whole[1].block_number) is None


@pytest.mark.chain
@pytest.mark.asyncio
async def test_out_of_order_batch_is_rejected_with_the_expected_seq(ledger: LedgerChain) -> None:
    await anchor(ledger, 0, 5, "first")

    for wrong_first_seq in (0, 4, 6):
        with pytest.raises(AnchorRejected, match="must start at seq 5") as caught:
            await ledger.send_anchor(wrong_first_seq, 1, some_root("again"))
        assert caught.value.first_seq == wrong_first_seq
        assert caught.value.chain_next_seq == 5


@pytest.mark.chain
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("count", "root", "error"),
    [(0, some_root("r"), "AuditLedgerEmptyBatch"), (1, bytes(32), "AuditLedgerZeroRoot")],
)
async def test_malformed_batches_are_rejected(
    ledger: LedgerChain, count: int, root: bytes, error: str
) -> None:
    with pytest.raises(AnchorRejected, match=error) as caught:
        await ledger.send_anchor(0, count, root)

    assert caught.value.chain_next_seq is None


@pytest.mark.chain
@pytest.mark.asyncio
async def test_a_signer_without_the_anchorer_role_is_rejected(ledger: LedgerChain) -> None:
    assert ledger.address is not None
    stranger = LedgerChain(ledger._w3, dev_account(3), ledger.address)

    with pytest.raises(AnchorRejected, match="AccessControlUnauthorizedAccount"):
        await stranger.send_anchor(0, 1, some_root("x"))


@pytest.mark.chain
@pytest.mark.asyncio
async def test_a_mined_revert_raises_with_the_chains_next_seq(ledger: LedgerChain) -> None:
    provider = ledger._w3.provider
    await provider.make_request("evm_setAutomine", [False])
    try:
        # Both pass gas estimation against the same state; the second loses once mined.
        winner = await ledger.send_anchor(0, 2, some_root("winner"))
        loser = await ledger.send_anchor(0, 1, some_root("loser"))
        assert await ledger.receipt(winner) is None  # pending: the node knows no receipt yet
        await provider.make_request("evm_mine", [])
    finally:
        await provider.make_request("evm_setAutomine", [True])

    assert await ledger.receipt(winner) is not None
    with pytest.raises(AnchorRejected, match="reverted in block") as caught:
        await ledger.receipt(loser)
    assert caught.value.first_seq == 0
    assert caught.value.chain_next_seq == 2


@pytest.mark.chain
@pytest.mark.asyncio
async def test_unknown_things_are_none(ledger: LedgerChain) -> None:
    unknown_tx = keccak(b"never sent")

    assert await ledger.receipt(unknown_tx) is None
    assert await ledger.wait_for_receipt(unknown_tx, timeout=0.2) is None
    assert await ledger.batch(0) is None
    assert await ledger.find_batch_event(0) is None
    assert await ledger.block_hash(await ledger.block_number() + 1000) is None
    assert await ledger.code_hash(Account.create().address) == EMPTY_CODE_HASH


@pytest.mark.chain
@pytest.mark.asyncio
async def test_receipt_of_a_transaction_that_is_not_an_anchor(ledger: LedgerChain) -> None:
    assert ledger.address is not None
    other = await LedgerChain(ledger._w3, dev_account(0), None).deploy_ledger(epoch=7)

    with pytest.raises(ChainError, match="not one of this ledger's anchors"):
        await ledger.receipt(other.tx_hash)


@pytest.mark.chain
@pytest.mark.asyncio
async def test_chain_facts(ledger: LedgerChain, node: LocalNode) -> None:
    assert ledger.address is not None
    genesis = await ledger.genesis_hash()

    assert await ledger.chain_id() == 31337
    assert genesis == await ledger.block_hash(0)
    assert len(genesis) == 32
    assert await ledger.code_hash(ledger.address) not in (EMPTY_CODE_HASH, bytes(32))
    assert ledger.rpc_url == node.rpc_url


# A node that is down, or answers garbage --------------------------------------------------

SECRET_PATH_KEY = "APIKEY0123456789"
SECRET_PASSWORD = "s3cretpassw0rd"


@pytest_asyncio.fixture
async def signer_key_and_down_chain() -> AsyncIterator[tuple[str, LedgerChain]]:
    """A client with a fresh key, pointed at a URL with credentials where nothing listens."""
    signer = Account.create()
    url = f"http://anchorer:{SECRET_PASSWORD}@127.0.0.1:{free_port()}/v3/{SECRET_PATH_KEY}"
    w3 = make_async_web3(url, timeout=1.0)
    yield signer.key.hex(), LedgerChain(w3, signer, "0x" + "22" * 20)
    await w3.provider.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "call",
    [
        lambda chain: chain.next_seq(),
        lambda chain: chain.block_number(),
        lambda chain: chain.send_anchor(0, 1, some_root("x")),
        lambda chain: chain.receipt(keccak(b"tx")),
        lambda chain: chain.find_batch_event(0),
    ],
    ids=["next_seq", "block_number", "send_anchor", "receipt", "find_batch_event"],
)
async def test_a_node_that_is_down_is_unavailable_and_nothing_secret_leaks(
    signer_key_and_down_chain: tuple[str, LedgerChain],
    call: Callable[[LedgerChain], Awaitable[object]],
) -> None:
    key, chain = signer_key_and_down_chain

    with pytest.raises(ChainUnavailable, match=r"http://127\.0\.0\.1:\d+/…") as caught:
        await call(chain)

    everything = "".join(traceback.format_exception(caught.value)) + repr(chain)
    for secret in (key, SECRET_PASSWORD, SECRET_PATH_KEY):
        assert secret not in everything
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.chain
@pytest.mark.asyncio
async def test_a_stopped_node_is_unavailable(anvil_factory: Callable[..., LocalNode]) -> None:
    node = anvil_factory(state_path=None)
    w3 = make_async_web3(node.rpc_url, RPC_TIMEOUT_SECONDS)
    chain = LedgerChain(w3, dev_account(0), None)
    assert await chain.block_number() == 0

    await asyncio.to_thread(node.stop)

    with pytest.raises(
        ChainUnavailable, match=re.escape(f"cannot reach the chain at {node.rpc_url}")
    ):
        await chain.block_number()
    await w3.provider.disconnect()


GARBAGE = {
    "not json": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\nthis is not json",
    "not utf-8": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n\xff\xfe\xfa",
    "html error": b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<h1>502</h1>",
    "no result": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    b'{"jsonrpc":"2.0","id":0}',
    "rpc error": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    b'{"jsonrpc":"2.0","id":0,"error":{"code":-32000,"message":"header not found"}}',
    "hangs up": b"",
    "hangs": None,
}


@pytest_asyncio.fixture(params=list(GARBAGE))
async def garbage_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A URL whose server answers every request with one kind of garbage (or not at all)."""
    answer = GARBAGE[request.param]
    released = asyncio.Event()
    handlers: set[asyncio.Task[None]] = set()

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await released.wait()
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    released.set()
    await asyncio.gather(*handlers, return_exceptions=True)
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_garbage_from_the_node_is_unavailable(garbage_url: str) -> None:
    w3 = make_async_web3(garbage_url, timeout=0.5)
    chain = LedgerChain(w3, dev_account(0), "0x" + "22" * 20)

    with pytest.raises(ChainUnavailable, match=re.escape(garbage_url)):
        await chain.next_seq()
    await w3.provider.disconnect()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("https://mainnet.infura.io/v3/abc123", "https://mainnet.infura.io/…"),
        ("https://user:pw@rpc.example.com:8443/?key=abc", "https://rpc.example.com:8443/…"),
        ("http://[::1]:8545/", "http://[::1]:8545"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# eth-tester: the same client on an in-process chain ---------------------------------------


@pytest.mark.asyncio
async def test_client_on_eth_tester(tester_ledger: LedgerChain) -> None:
    for batch_id in range(3):
        first_seq = await tester_ledger.next_seq()
        tx_hash = await tester_ledger.send_anchor(first_seq, batch_id + 1, some_root(str(batch_id)))
        receipt = await tester_ledger.receipt(tx_hash)
        assert receipt is not None and receipt.batch_id == batch_id

    events = await tester_ledger.batch_events(0, chunk_blocks=2)
    assert [(event.first_seq, event.count) for event in events] == [(0, 1), (1, 2), (3, 3)]
    assert events[-1].head == await tester_ledger.head()
    assert await tester_ledger.find_batch_event(1) == events[1]
