"""What the verifier reads from the chain: the AuditLedger reads as a protocol.

Exports: `AuditChain`, `BatchOnChain`, `BatchEventOnChain`, `AnchorOnChain`, `ChainFor`,
`EMPTY_CODE_HASH`.

`chain.client.LedgerChain` (web3) and `verifier.rpc.JsonRpcChain` (httpx + eth_abi, for the
client library) implement `AuditChain`; tests pass a fake with the contract's rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from eth_utils.crypto import keccak

#: keccak256 of empty code: what `code_hash` answers for an address without a contract.
EMPTY_CODE_HASH = keccak(b"")


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
