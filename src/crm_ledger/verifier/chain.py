"""What the verifier reads from the chain: the AuditLedger reads as a protocol, and the values
they answer.

Exports: `AuditChain`, `BatchOnChain`, `BatchAnchoredEvent`, `ChainFor`,
`EMPTY_CODE_HASH`.

`chain.client.LedgerChain` (web3) and `verifier.rpc.JsonRpcChain` (httpx + eth_abi, for the
client library) implement `AuditChain`; tests pass a fake with the contract's rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from eth_utils.crypto import keccak

#: keccak256 of empty code: what `code_hash` answers for an address without a contract.
EMPTY_CODE_HASH = keccak(b"")


@dataclass(frozen=True, slots=True)
class BatchOnChain:
    """A batch as the AuditLedger contract's `batch(id)` view returns it."""

    batch_id: int
    first_seq: int
    count: int
    root: bytes


@dataclass(frozen=True, slots=True)
class BatchAnchoredEvent:
    """One `BatchAnchored(batchId, firstSeq, count, root, head)` event and where it was logged:
    the one shape of an anchored batch that every chain reader returns (the service's web3
    client, this package's JSON-RPC reader, the test fakes).

    `gas_used` and `effective_gas_price` are its transaction's, when the reader had its receipt
    (the service's client always does; reading logs alone does not give them).
    """

    batch_id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    gas_used: int | None = None
    effective_gas_price: int | None = None


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
    ) -> Sequence[BatchAnchoredEvent]: ...
    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchAnchoredEvent | None: ...
    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None: ...
    async def block_hash(self, number: int) -> bytes | None: ...


#: Given a contract address, a chain client bound to it.
ChainFor = Callable[[str], AuditChain]
