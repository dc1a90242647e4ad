"""Fixtures for the indexer tests: an Anvil of each test's own with an AuditLedger deployed and
recorded, an anchorer, a LoyaltyToken on demand, and indexers over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
from eth_utils.address import to_checksum_address
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from web3 import AsyncWeb3

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.deploy import ensure_ledger_deployment
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.chain.signer import dev_account
from crm_ledger.config import Settings
from crm_ledger.db.models import LoyaltyWallet
from crm_ledger.indexer.indexer import Indexer
from crm_ledger.indexer.reconcile import Reconciler, SourceReader
from crm_ledger.indexer.source import ChainSource, JsonRpcSource
from crm_ledger.loyalty.chain import LoyaltyToken
from crm_ledger.loyalty.deploy import ensure_token_deployment
from tests.anchoring.fakes import fast_settings
from tests.chain.conftest import free_port

#: The dev account that deploys and operates the LoyaltyToken in these tests.
TOKEN_ADMIN_INDEX = 5


def indexer_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings that index every block at once and retry quickly."""
    values: dict[str, object] = {
        "confirmations": 0,
        "indexer_poll_seconds": 0.01,
        "indexer_retry_max_seconds": 0.05,
        "reconcile_interval_seconds": 3600.0,
    }
    values.update(overrides)
    return fast_settings(tmp_path, **values)


class Dropped(Exception):
    """A token transaction that a reorg took away, or made revert, before it was seen mined."""


@dataclass
class Token:
    """The LoyaltyToken of `AnvilChain.deploy_token`; each method waits until its transactions
    are mined (`Dropped` if a reorg took one away or made it revert)."""

    client: LoyaltyToken

    async def issue(
        self, campaign: bytes, entries: list[tuple[bytes, str, int]], *, budget: int = 10**9
    ) -> bytes:
        """issueBatch(campaign, ids, holders, amounts), setting a budget for it first."""
        await self._mined(await self.client.send_set_budget(campaign, budget))
        return await self._mined(
            await self.client.send_issue_batch(
                campaign,
                [entry[0] for entry in entries],
                [entry[1] for entry in entries],
                [entry[2] for entry in entries],
            )
        )

    async def redeem(self, burn_id: bytes, holder: str, amount: int, ref: bytes) -> bytes:
        """redeem(id, from, amount, ref)."""
        return await self._mined(await self.client.send_redeem(burn_id, holder, amount, ref))

    async def expire(self, burn_id: bytes, holder: str, amount: int, reason: bytes) -> bytes:
        """expireBatch of one entry (id, from, amount) for `reason`."""
        return await self._mined(
            await self.client.send_expire_batch([burn_id], [holder], [amount], reason)
        )

    async def balance_of(self, holder: str) -> int:
        """balanceOf(holder)."""
        return await self.client.balance_of(holder)

    async def _mined(self, tx_hash: bytes) -> bytes:
        receipt = await self.client.wait_for_receipt(tx_hash, timeout=5, poll_seconds=0.01)
        if receipt is None:
            raise Dropped(f"0x{tx_hash.hex()} was dropped by a reorg")
        if receipt.status != 1:
            # Estimated before a reorg took away what it relied on (a budget, a balance).
            raise Dropped(f"0x{tx_hash.hex()} reverted after a reorg")
        return tx_hash


@dataclass
class AnvilChain:
    """An Anvil of one test, its AuditLedger (recorded in the database), and helpers."""

    node: LocalNode
    w3: AsyncWeb3[Any]
    ledger: LedgerChain
    deployment: DeploymentRef
    engine: Engine
    session_factory: sessionmaker[Session]
    tmp_path: Path

    @property
    def source(self) -> ChainSource:
        """A JSON-RPC source on this chain."""
        return JsonRpcSource(self.w3)

    def anchorer(self, **settings: object) -> Anchorer:
        """An anchorer on this chain."""
        return Anchorer(
            session_factory=self.session_factory,
            chain=self.ledger,
            deployment=self.deployment,
            # A reorg can drop a sent transaction: replace it after 2 s, not the default 30 s.
            settings=fast_settings(
                self.tmp_path, **{"anchor_replace_after_seconds": 2.0, **settings}
            ),
        )

    async def anchor(self, **settings: object) -> None:
        """Anchor every pending record."""
        anchorer = self.anchorer(**settings)
        for _ in range(1000):
            if not await anchorer.step():
                return
        raise AssertionError("anchorer still busy")

    def indexer(
        self, *, source: ChainSource | None = None, reconcile: bool = False, **settings: object
    ) -> Indexer:
        """An indexer on this chain (or on `source`)."""
        chain_source = source if source is not None else self.source
        return Indexer(
            session_factory=self.session_factory,
            source=chain_source,
            settings=indexer_settings(self.tmp_path, **settings),
            reconciler=Reconciler(
                session_factory=self.session_factory, chain=SourceReader(chain_source)
            )
            if reconcile
            else None,
        )

    async def index(self, indexer: Indexer | None = None, *, rounds: int = 10_000) -> Indexer:
        """Step an indexer until it has read every block."""
        indexer = indexer if indexer is not None else self.indexer()
        for _ in range(rounds):
            if not await indexer.step():
                return indexer
        raise AssertionError("indexer still busy")

    async def rpc(self, method: str, *params: Any) -> Any:
        """A raw JSON-RPC call (anvil_*, evm_*); raises on an error answer."""
        response = await self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in response, response
        return response["result"]

    async def head(self) -> int:
        """The latest block number."""
        return int(await self.w3.eth.block_number)

    async def mine(self, blocks: int = 1) -> None:
        """Mine empty blocks."""
        await self.rpc("anvil_mine", hex(blocks))

    async def deploy_token(self) -> Token:
        """Deploy a LoyaltyToken and record it in `deployments` (epoch 1)."""
        unbound = LoyaltyToken(self.w3, dev_account(TOKEN_ADMIN_INDEX), None)
        deployment = await ensure_token_deployment(
            session_factory=self.session_factory,
            token=unbound,
            settings=indexer_settings(self.tmp_path),
        )
        return Token(unbound.at(deployment.address))


def add_wallet(session_factory: sessionmaker[Session], customer_pk: int, address: str) -> None:
    """Give a customer a loyalty address."""
    with session_factory.begin() as session:
        session.add(LoyaltyWallet(customer_pk=customer_pk, address=to_checksum_address(address)))


@pytest_asyncio.fixture
async def anvil_chain(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> AsyncIterator[AnvilChain]:
    """An in-memory Anvil of this test's own with an AuditLedger deployed and recorded."""
    node = await asyncio.to_thread(start_anvil, port=free_port(), state_path=None)
    w3 = make_async_web3(node.rpc_url, 10.0)
    try:
        unbound = LedgerChain(w3, dev_account(0), None)
        deployment = await ensure_ledger_deployment(session_factory=session_factory, chain=unbound)
        yield AnvilChain(
            node=node,
            w3=w3,
            ledger=unbound.at(deployment.address),
            deployment=DeploymentRef(
                epoch=deployment.epoch,
                address=deployment.address,
                code_hash=deployment.code_hash,
                block_number=deployment.block_number,
            ),
            engine=engine,
            session_factory=session_factory,
            tmp_path=tmp_path,
        )
    finally:
        await w3.provider.disconnect()
        await asyncio.to_thread(node.stop)
