"""What audits read from the chain, and a read-only AuditLedger client for auditors.

Exports: `AuditChain`, `BatchOnChain`, `BatchEventOnChain`, `AnchorOnChain`, `ChainFor`,
`ChainProvider`, `RpcChainProvider`, `read_only_chain`, `connect_read_only`, `default_rpc_url`.

`chain.client.LedgerChain` is the real implementation of `AuditChain`; tests pass a fake with
the contract's rules. Nothing here imports the database layer: the offline verifier uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.config import Settings


class BatchOnChain(Protocol):
    """A batch as the contract's `batch(id)` view returns it."""

    @property
    def first_seq(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def root(self) -> bytes: ...


class BatchEventOnChain(Protocol):
    """A `BatchAnchored` event and where it was logged."""

    @property
    def batch_id(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def root(self) -> bytes: ...
    @property
    def head(self) -> bytes: ...
    @property
    def tx_hash(self) -> bytes: ...
    @property
    def block_number(self) -> int: ...
    @property
    def block_hash(self) -> bytes: ...


class AnchorOnChain(BatchEventOnChain, Protocol):
    """A mined anchor transaction (`LedgerChain.receipt`): its block and the batch it created."""


class AuditChain(Protocol):
    """The reads an audit makes; every method may raise `ChainUnavailable`."""

    async def chain_id(self) -> int: ...
    async def genesis_hash(self) -> bytes: ...
    async def code_hash(self, address: str) -> bytes: ...
    async def next_seq(self) -> int: ...
    async def head(self) -> bytes: ...
    async def batch_count(self) -> int: ...
    async def batch(self, batch_id: int) -> BatchOnChain | None: ...
    async def batch_events(
        self, from_block: int, to_block: int | None = None
    ) -> Sequence[BatchEventOnChain]: ...
    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchEventOnChain | None: ...
    async def receipt(self, tx_hash: bytes) -> AnchorOnChain | None: ...
    async def block_hash(self, number: int) -> bytes | None: ...


#: Given a contract address, a chain client bound to it.
ChainFor = Callable[[str], AuditChain]


class ChainProvider(Protocol):
    """Opens access to the chain for one audit (an HTTP connection, or a fake in tests)."""

    def connect(self) -> AbstractAsyncContextManager[ChainFor]: ...


@dataclass(frozen=True, slots=True)
class RpcChainProvider:
    """`ChainProvider` over JSON-RPC: one connection per `connect()`, read-only clients."""

    rpc_url: str
    timeout: float

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[ChainFor]:
        """Chains bound to any address, sharing one connection closed on exit."""
        w3 = make_async_web3(self.rpc_url, self.timeout)
        try:
            yield lambda address: read_only_chain(w3, address)
        finally:
            await w3.provider.disconnect()


def read_only_chain(w3: AsyncWeb3[Any], address: str) -> LedgerChain:
    """A `LedgerChain` bound to the AuditLedger at `address` that can only read.

    `LedgerChain` wants a signer; an auditor has no key, so it gets a fresh random account that
    holds nothing and is never used to sign.
    """
    nobody: LocalAccount = Account.create()
    return LedgerChain(w3, nobody, address)


@asynccontextmanager
async def connect_read_only(
    rpc_url: str, address: str, *, timeout: float
) -> AsyncIterator[LedgerChain]:
    """`read_only_chain` over its own HTTP connection, closed on exit."""
    w3 = make_async_web3(rpc_url, timeout)
    try:
        yield read_only_chain(w3, address)
    finally:
        await w3.provider.disconnect()


def default_rpc_url(settings: Settings) -> str:
    """The node the service anchors to: `CRM_LEDGER_RPC_URL`, else its own Anvil's port."""
    return settings.rpc_url or f"http://127.0.0.1:{settings.anvil_port}"
