"""Recorded AuditLedger deployments: once, checked against the chain, recovered after a reset."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from web3 import AsyncWeb3

from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.deploy import ensure_ledger_deployment, recover_new_epoch, verify_deployment
from crm_ledger.chain.node import LocalNode
from crm_ledger.chain.signer import dev_account
from crm_ledger.db.models import Batch, BatchStatus, Deployment
from crm_ledger.errors import ChainError, ChainReset

from .conftest import RPC_TIMEOUT_SECONDS, some_root

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]

ZERO_ADDRESS = "0x" + "00" * 20


@pytest_asyncio.fixture
async def chain(anvil_w3: AsyncWeb3[Any]) -> LedgerChain:
    """An unbound client on the session Anvil, signing with dev account 0."""
    return LedgerChain(anvil_w3, dev_account(0), None)


async def nonce(chain: LedgerChain) -> int:
    """Transactions sent by the signer so far."""
    return await chain._w3.eth.get_transaction_count(chain.signer_address)


def deployments(session_factory: sessionmaker[Session]) -> list[Deployment]:
    """Every recorded deployment, by epoch."""
    with session_factory() as session:
        return list(session.scalars(select(Deployment).order_by(Deployment.epoch)))


def add_batches(session_factory: sessionmaker[Session], statuses: list[BatchStatus]) -> None:
    """Batches 0.. of two records each, in the given states (anchored ones on epoch 1)."""
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        head = bytes(32)
        for batch_id, status in enumerate(statuses):
            root = some_root(f"batch {batch_id}")
            new_head = hashlib.sha256(head + root).digest()
            on_chain = status is not BatchStatus.CUT
            session.add(
                Batch(
                    id=batch_id,
                    first_seq=2 * batch_id,
                    count=2,
                    root=root,
                    previous_head=head,
                    head=new_head,
                    status=status.value,
                    epoch=1 if status is BatchStatus.ANCHORED else None,
                    tx_hash=some_root(f"tx {batch_id}") if on_chain else None,
                    block_number=10 + batch_id if status is BatchStatus.ANCHORED else None,
                    block_hash=some_root(f"block {batch_id}")
                    if status is BatchStatus.ANCHORED
                    else None,
                    gas_used=83_000 if status is BatchStatus.ANCHORED else None,
                    sent_at=now if on_chain else None,
                    anchored_at=now if status is BatchStatus.ANCHORED else None,
                )
            )
            head = new_head


async def test_first_call_deploys_epoch_1_and_records_it(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)

    assert (deployment.contract, deployment.epoch, deployment.chain_id) == ("AuditLedger", 1, 31337)
    assert deployment.genesis_hash == await chain.genesis_hash()
    assert deployment.code_hash == await chain.code_hash(deployment.address)
    receipt = await chain._w3.eth.get_transaction_receipt(deployment.tx_hash)
    assert receipt["contractAddress"] == deployment.address
    assert receipt["blockNumber"] == deployment.block_number
    contract = chain._w3.eth.contract(address=deployment.address, abi=chain._abi)
    assert await contract.functions.epoch().call() == 1
    assert await contract.functions.previousLedger().call() == ZERO_ADDRESS
    assert [row.address for row in deployments(session_factory)] == [deployment.address]


async def test_second_call_returns_the_same_row_and_sends_nothing(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    first = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    sent = await nonce(chain)

    second = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)

    assert (second.pk, second.address, second.tx_hash) == (first.pk, first.address, first.tx_hash)
    assert await nonce(chain) == sent
    assert len(deployments(session_factory)) == 1


async def test_processes_starting_together_deploy_once(
    session_factory: sessionmaker[Session], anvil: LocalNode
) -> None:
    signer = dev_account(0)
    start = threading.Barrier(3)
    addresses: list[str] = []

    def one_process() -> None:
        async def run() -> str:
            w3 = make_async_web3(anvil.rpc_url, RPC_TIMEOUT_SECONDS)
            try:
                start.wait()
                chain = LedgerChain(w3, signer, None)
                row = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
                return row.address
            finally:
                await w3.provider.disconnect()

        addresses.append(asyncio.run(run()))

    workers = [threading.Thread(target=one_process) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert len(addresses) == 3 and len(set(addresses)) == 1
    assert len(deployments(session_factory)) == 1


async def test_rpc_url_is_the_only_thing_about_the_node_in_messages(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    with session_factory() as session, session.begin():
        session.execute(update(Deployment).values(chain_id=1))

    with pytest.raises(ChainReset, match="the URL now leads to a different chain") as caught:
        await ensure_ledger_deployment(session_factory=session_factory, chain=chain)

    assert "chain 31337" in str(caught.value) and "chain 1:" in str(caught.value)
    assert deployment.address in str(caught.value)
    assert (caught.value.expected, caught.value.found) == ("chain id 1", "chain id 31337")


async def test_rolled_back_deployment_is_a_reset(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    snapshot = (await chain._w3.provider.make_request("evm_snapshot", []))["result"]
    deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    await chain._w3.provider.make_request("evm_revert", [snapshot])

    with pytest.raises(ChainReset, match="rolled back past the deployment") as caught:
        await verify_deployment(chain, deployment)

    assert f"has no AuditLedger code at {deployment.address}" in str(caught.value)
    assert caught.value.found == "no code"


async def test_same_address_on_another_genesis_is_a_reset(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    deployment.genesis_hash = some_root("another genesis")

    with pytest.raises(ChainReset, match="is not the chain AuditLedger epoch 1") as caught:
        await verify_deployment(chain, deployment)

    assert "reset or replaced" in str(caught.value)


# A dev chain that loses its state ---------------------------------------------------------


@pytest_asyncio.fixture
async def resettable(
    anvil_factory: Callable[..., LocalNode], tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    """An Anvil of this test's own; calling the result restarts it without its state."""
    state_path = tmp_path / "anvil" / "state.json"
    nodes = [anvil_factory(state_path=state_path)]
    clients: list[AsyncWeb3[Any]] = []

    def client() -> LedgerChain:
        w3 = make_async_web3(nodes[-1].rpc_url, RPC_TIMEOUT_SECONDS)
        clients.append(w3)
        return LedgerChain(w3, dev_account(0), None)

    async def reset() -> LedgerChain:
        await asyncio.to_thread(nodes[-1].stop)
        for leftover in state_path.parent.glob("state.json*"):
            leftover.unlink()
        # A fresh genesis block differs only in its timestamp, in whole seconds: a chain
        # restarted within the same second has the same genesis hash.
        await asyncio.sleep(1.05 - time.time() % 1)
        nodes.append(anvil_factory(port=nodes[-1].port, state_path=state_path))
        return client()

    reset.client = client  # type: ignore[attr-defined]
    yield reset
    for w3 in clients:
        await w3.provider.disconnect()


async def test_deleted_state_is_a_reset_with_instructions(
    session_factory: sessionmaker[Session], resettable: Any
) -> None:
    before = resettable.client()
    deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=before)
    old_genesis = deployment.genesis_hash

    after = await resettable()

    with pytest.raises(ChainReset) as caught:
        await ensure_ledger_deployment(session_factory=session_factory, chain=after)
    message = str(caught.value)
    assert f"has no AuditLedger code at {deployment.address}" in message
    assert f"genesis 0x{old_genesis[:4].hex()}… then" in message
    assert "nothing is lost" in message
    assert "Run `crm-ledger chain recover` to open ledger epoch 2" in message
    assert after.rpc_url in message
    assert len(deployments(session_factory)) == 1


async def test_recover_opens_the_next_epoch_and_requeues_every_batch(
    session_factory: sessionmaker[Session], resettable: Any
) -> None:
    first = await ensure_ledger_deployment(
        session_factory=session_factory, chain=resettable.client()
    )
    add_batches(
        session_factory,
        [BatchStatus.ANCHORED, BatchStatus.ANCHORED, BatchStatus.SENT, BatchStatus.CUT],
    )
    after = await resettable()

    second = await recover_new_epoch(session_factory=session_factory, chain=after)

    assert (second.epoch, second.chain_id) == (2, 31337)
    assert second.genesis_hash != first.genesis_hash
    assert [row.epoch for row in deployments(session_factory)] == [1, 2]
    contract = after._w3.eth.contract(address=second.address, abi=after._abi)
    assert await contract.functions.epoch().call() == 2
    assert await contract.functions.previousLedger().call() == first.address
    with session_factory() as session:
        batches = list(session.scalars(select(Batch).order_by(Batch.id)))
    assert [batch.status for batch in batches] == ["cut"] * 4
    assert all(
        batch.epoch is None
        and batch.tx_hash is None
        and batch.block_number is None
        and batch.block_hash is None
        and batch.gas_used is None
        and batch.sent_at is None
        and batch.anchored_at is None
        for batch in batches
    )
    assert [(batch.first_seq, batch.root) for batch in batches] == [
        (2 * n, some_root(f"batch {n}")) for n in range(4)
    ]
    # The service starts again on the new epoch, and the journal re-anchors from seq 0.
    current = await ensure_ledger_deployment(session_factory=session_factory, chain=after)
    assert current.pk == second.pk
    ledger = after.at(current.address)
    assert await ledger.next_seq() == 0
    tx_hash = await ledger.send_anchor(0, 2, batches[0].root)
    assert await ledger.wait_for_receipt(tx_hash, timeout=10) is not None


async def test_recover_is_refused_while_the_deployment_is_intact(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    add_batches(session_factory, [BatchStatus.ANCHORED])
    sent = await nonce(chain)

    with pytest.raises(ChainError, match=r"is intact .*recovery refused"):
        await recover_new_epoch(session_factory=session_factory, chain=chain)

    assert await nonce(chain) == sent
    assert [row.pk for row in deployments(session_factory)] == [deployment.pk]
    with session_factory() as session:
        assert session.scalar(select(Batch.status)) == "anchored"


async def test_forced_recover_on_an_intact_chain(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    first = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    add_batches(session_factory, [BatchStatus.ANCHORED, BatchStatus.SENT])

    second = await recover_new_epoch(session_factory=session_factory, chain=chain, force=True)

    assert second.epoch == 2 and second.address != first.address
    with session_factory() as session:
        assert session.scalar(select(func.count()).where(Batch.status == "cut")) == 2
    latest = await ensure_ledger_deployment(session_factory=session_factory, chain=chain)
    assert latest.pk == second.pk


async def test_recover_without_a_deployment_is_refused(
    session_factory: sessionmaker[Session], chain: LedgerChain
) -> None:
    with pytest.raises(ChainError, match="nothing to recover"):
        await recover_new_epoch(session_factory=session_factory, chain=chain)
    assert deployments(session_factory) == []
