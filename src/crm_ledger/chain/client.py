"""The async AuditLedger client: anchors, receipts, batch events and deployment over JSON-RPC.

Exports: `LedgerChain`, `LedgerDeployment`, `make_async_web3`; the values its reads answer,
`BatchOnChain` and `BatchAnchoredEvent` (from `verifier.chain`, the one home of those shapes);
and from `chain.contract` and `chain.rpc`: `EMPTY_CODE_HASH`, `Fees`, `SentTransaction`,
`redact_url`.

Errors (see `crm_ledger.errors`): transport failures and node errors become `ChainUnavailable`
as `chain.contract.ContractClient` raises them; a revert of `anchor` becomes `AnchorRejected`.
Both are raised without the underlying exception chained, since those can carry the full URL.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_typing import ChecksumAddress, Hash32, HexAddress, HexStr
from eth_utils.address import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError
from web3.types import FilterParams, LogReceipt, TxReceipt

from crm_ledger.chain.contract import (
    EMPTY_CODE_HASH,
    ContractClient,
    Fees,
    SentTransaction,
    poll_until_found,
    show_arguments,
)
from crm_ledger.chain.provider import KeepAliveHTTPProvider
from crm_ledger.chain.rpc import redact_url
from crm_ledger.errors import AnchorRejected, ChainError, ChainUnavailable
from crm_ledger.verifier.chain import BatchAnchoredEvent, BatchOnChain

__all__ = [
    "EMPTY_CODE_HASH",
    "BatchAnchoredEvent",
    "BatchOnChain",
    "Fees",
    "LedgerChain",
    "LedgerDeployment",
    "SentTransaction",
    "make_async_web3",
    "redact_url",
]

ZERO_ADDRESS = ChecksumAddress(HexAddress(HexStr("0x" + "00" * 20)))
#: Block range per eth_getLogs request; public providers cap ranges at a few thousand blocks.
LOG_CHUNK_BLOCKS = 2_000


@dataclass(frozen=True, slots=True)
class LedgerDeployment:
    """A freshly deployed AuditLedger contract."""

    address: ChecksumAddress
    tx_hash: bytes
    block_number: int
    code_hash: bytes
    gas_used: int


def make_async_web3(rpc_url: str, timeout: float) -> AsyncWeb3[AsyncHTTPProvider]:
    """An `AsyncWeb3` over HTTP that fails fast: `timeout` seconds per request, no retries,
    connections kept alive between requests (`chain.provider`).

    The anchorer retries on its own schedule, so the provider's retries would only delay the
    `ChainUnavailable` it needs to see. Close it with `await w3.provider.disconnect()`.
    """
    provider = KeepAliveHTTPProvider(
        rpc_url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
        exception_retry_configuration=None,
    )
    return AsyncWeb3(provider)


class LedgerChain(ContractClient):
    """AuditLedger over JSON-RPC: reads, anchors signed locally, receipts and events.

    The `AsyncWeb3` and the signer come in from outside; the client neither opens nor closes
    connections. `address` may be None until the contract is deployed (`deploy_ledger`, then
    `at(address)`); the ledger methods need it. Chain facts (`chain_id`, `block_hash`,
    `code_hash`, ...) come from `ContractClient`.

    Example::

        w3 = make_async_web3("http://127.0.0.1:8545", timeout=10)
        chain = LedgerChain(w3, load_signer(settings, chain_id=await w3.eth.chain_id), address)
        tx_hash = await chain.send_anchor(first_seq=0, count=3, root=root)
        receipt = await chain.wait_for_receipt(tx_hash, timeout=30)
        assert receipt is not None and await chain.next_seq() == 3
        event = await chain.find_batch_event(receipt.batch_id)
        await w3.provider.disconnect()
    """

    contract_name = "AuditLedger"

    def __repr__(self) -> str:
        return f"LedgerChain({self.rpc_url}, address={self.address}, signer={self.signer_address})"

    def at(self, address: str) -> LedgerChain:
        """The same node and signer, bound to the AuditLedger at `address`."""
        return LedgerChain(self._w3, self._signer, address, abi=self._abi)

    # Ledger views ------------------------------------------------------------------------

    async def next_seq(self) -> int:
        """The sequence number the next batch must start at."""
        return int(await self._view("nextSeq"))

    async def head(self) -> bytes:
        """The running ledger head (32 zero bytes before the first batch)."""
        return bytes(await self._view("head"))

    async def batch_count(self) -> int:
        """How many batches the contract holds."""
        return int(await self._view("batchCount"))

    async def batch(self, batch_id: int) -> BatchOnChain | None:
        """Batch `batch_id` as the contract stores it, or None if there is no such batch."""
        found = await self._view_or_unknown_batch("batch", batch_id)
        if found is None:
            return None
        first_seq, count, root = found
        return BatchOnChain(batch_id=batch_id, first_seq=first_seq, count=count, root=bytes(root))

    # Anchoring ---------------------------------------------------------------------------

    async def send_anchor(self, first_seq: int, count: int, root: bytes) -> bytes:
        """Sign and send `anchor(first_seq, count, root)`; returns the transaction hash.

        Raises `AnchorRejected` when the contract would revert (checked by gas estimation), with
        `chain_next_seq` set when the batch is out of order.
        """
        return (await self.send_anchor_transaction(first_seq, count, root)).tx_hash

    async def send_anchor_transaction(
        self,
        first_seq: int,
        count: int,
        root: bytes,
        *,
        nonce: int | None = None,
        fees: Fees | None = None,
    ) -> SentTransaction:
        """`send_anchor`, returning the nonce and fees it used; with `nonce` and higher `fees`
        it replaces a stuck transaction of that nonce (same batch, higher fee).

        Example (a replacement 12.5 % above a stuck one)::

            stuck = await chain.send_anchor_transaction(0, 3, root)
            bumped = Fees(stuck.fees.max_fee_per_gas * 9 // 8 + 1,
                          stuck.fees.max_priority_fee_per_gas * 9 // 8 + 1)
            await chain.send_anchor_transaction(0, 3, root, nonce=stuck.nonce, fees=bumped)
        """
        contract = self._bound_contract()
        data = contract.encode_abi("anchor", args=[first_seq, count, root])
        try:
            gas = await self._estimate_gas({"to": contract.address, "data": data})
        except ContractLogicError as exc:
            raise self._rejected(exc, first_seq) from None
        return await self._sign_and_send_transaction(
            {"to": contract.address, "data": data, "gas": gas}, nonce=nonce, fees=fees
        )

    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None:
        """The mined anchor transaction `tx_hash`, or None while the node does not know it.

        None covers both "still pending" and "gone" (dropped, or rolled back with its block).
        A mined transaction that reverted raises `AnchorRejected`.
        """
        raw = await self._raw_receipt(tx_hash)
        if raw is None:
            return None
        if raw["status"] != 1:
            raise await self._reverted_on_chain(raw)
        event = self._batch_event_from(raw)
        return replace(event, effective_gas_price=int(raw.get("effectiveGasPrice", 0)))

    async def wait_for_receipt(
        self, tx_hash: bytes, timeout: float, *, poll_seconds: float = 0.05
    ) -> BatchAnchoredEvent | None:
        """`receipt(tx_hash)` once it exists, or None if it does not within `timeout` seconds."""
        return await poll_until_found(lambda: self.receipt(tx_hash), timeout, poll_seconds)

    # Events ------------------------------------------------------------------------------

    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchAnchoredEvent | None:
        """The `BatchAnchored` event of batch `batch_id` at or after `from_block`, or None.

        The contract records each batch's block, so this is one view call and one
        single-block log query however long the chain is.
        """
        block = await self._view_or_unknown_batch("batchBlockNumber", batch_id)
        if block is None or block < from_block:
            return None
        matches = await self._batch_events_between(int(block), int(block), batch_ids=[batch_id])
        return matches[-1] if matches else None

    async def batch_events(
        self, from_block: int, to_block: int | None = None, *, chunk_blocks: int = LOG_CHUNK_BLOCKS
    ) -> list[BatchAnchoredEvent]:
        """Every `BatchAnchored` event in blocks `from_block`..`to_block` (default: latest).

        Queried `chunk_blocks` blocks at a time, in chain order.
        """
        last = to_block if to_block is not None else await self.block_number()
        events: list[BatchAnchoredEvent] = []
        start = from_block
        while start <= last:
            end = min(start + chunk_blocks - 1, last)
            events += await self._batch_events_between(start, end, batch_ids=None)
            start = end + 1
        return events

    # Deployment --------------------------------------------------------------------------

    async def deploy_ledger(
        self,
        *,
        epoch: int,
        previous_ledger: str | None = None,
        receipt_timeout: float = 60.0,
    ) -> LedgerDeployment:
        """Deploy an AuditLedger (admin and anchorer: the signer) and wait until it is mined."""
        constructor = next(entry for entry in self._abi if entry["type"] == "constructor")
        types = [argument["type"] for argument in constructor["inputs"]]
        previous = to_checksum_address(previous_ledger) if previous_ledger else ZERO_ADDRESS
        arguments = [self.signer_address, self.signer_address, epoch, previous]
        try:
            tx_hash = await self._send_deployment(types, arguments)
        except ContractLogicError as exc:
            raise ChainError(
                f"deploying AuditLedger epoch {epoch} on {self.rpc_url} would revert: {exc}"
            ) from None
        raw = await poll_until_found(lambda: self._raw_receipt(tx_hash), receipt_timeout, 0.05)
        if raw is None:
            raise ChainUnavailable(
                f"the AuditLedger deployment 0x{tx_hash.hex()} was not mined on "
                f"{self.rpc_url} within {receipt_timeout:.0f} s"
            )
        address = raw.get("contractAddress")
        if raw["status"] != 1 or address is None:
            raise ChainError(
                f"the AuditLedger deployment 0x{tx_hash.hex()} reverted on {self.rpc_url}"
            )
        return LedgerDeployment(
            address=to_checksum_address(address),
            tx_hash=tx_hash,
            block_number=int(raw["blockNumber"]),
            code_hash=await self.code_hash(address),
            gas_used=int(raw["gasUsed"]),
        )

    # Internals ---------------------------------------------------------------------------

    @functools.cached_property
    def _event_topic(self) -> bytes:
        return self._topic("BatchAnchored")

    async def _view_or_unknown_batch(self, name: str, batch_id: int) -> Any:
        """`name(batch_id)`, or None when the contract reverts with AuditLedgerUnknownBatch."""
        try:
            return await self._view(name, batch_id)
        except ContractLogicError as exc:
            decoded = self._decode_revert(exc)
            if decoded is not None and decoded[0] == "AuditLedgerUnknownBatch":
                return None
            raise ChainError(
                f"AuditLedger.{name}({batch_id}) reverted on {self.rpc_url}: {exc}"
            ) from None

    def _rejected(self, exc: ContractLogicError, first_seq: int) -> AnchorRejected:
        decoded = self._decode_revert(exc)
        if decoded is None:
            return AnchorRejected(
                f"AuditLedger at {self.address} rejects the batch at seq {first_seq}: "
                f"{exc.message or 'execution reverted'}",
                first_seq=first_seq,
                chain_next_seq=None,
            )
        name, arguments = decoded
        if name == "AuditLedgerOutOfOrder":
            expected = int(arguments[0])
            return AnchorRejected(
                f"AuditLedger at {self.address} rejects the batch at seq {first_seq}: "
                f"AuditLedgerOutOfOrder, the next batch must start at seq {expected}",
                first_seq=first_seq,
                chain_next_seq=expected,
            )
        return AnchorRejected(
            f"AuditLedger at {self.address} rejects the batch at seq {first_seq}: "
            f"{name}({show_arguments(arguments)})",
            first_seq=first_seq,
            chain_next_seq=None,
        )

    async def _reverted_on_chain(self, raw: TxReceipt) -> AnchorRejected:
        """Why a mined anchor failed (it passed estimation, so: a race, or out of gas)."""
        tx_hash = bytes(raw["transactionHash"])
        with self._node.transport("eth_getTransactionByHash"):
            sent = await self._w3.eth.get_transaction(Hash32(tx_hash))
        selector_and_args = bytes(sent["input"])
        first_seq = int(abi_decode(["uint64", "uint32", "bytes32"], selector_and_args[4:])[0])
        chain_next_seq = await self.next_seq()
        return AnchorRejected(
            f"anchor transaction 0x{tx_hash.hex()} for the batch at seq {first_seq} reverted in "
            f"block {raw['blockNumber']} (gas used {raw['gasUsed']} of {sent['gas']}); the "
            f"ledger's next seq is {chain_next_seq}",
            first_seq=first_seq,
            chain_next_seq=chain_next_seq,
        )

    def _batch_event_from(self, raw: TxReceipt) -> BatchAnchoredEvent:
        for log in raw["logs"]:
            if self._is_batch_anchored(log):
                return self._decode_event(log, gas_used=int(raw["gasUsed"]))
        raise ChainError(
            f"transaction 0x{bytes(raw['transactionHash']).hex()} holds no BatchAnchored event "
            f"of the AuditLedger at {self.address}: it is not one of this ledger's anchors"
        )

    async def _batch_events_between(
        self, from_block: int, to_block: int, *, batch_ids: Sequence[int] | None
    ) -> list[BatchAnchoredEvent]:
        topics: list[Any] = [self._event_topic]
        if batch_ids is not None:
            topics.append(
                [HexStr("0x" + batch_id.to_bytes(32, "big").hex()) for batch_id in batch_ids]
            )
        query: FilterParams = {
            "address": self._bound_contract().address,
            "fromBlock": from_block,
            "toBlock": to_block,
            "topics": topics,
        }
        with self._node.transport("eth_getLogs"):
            logs = await self._w3.eth.get_logs(query)
            gas_by_tx: dict[bytes, int] = {}
            for log in logs:
                tx_hash = bytes(log["transactionHash"])
                if tx_hash not in gas_by_tx:
                    found = await self._w3.eth.get_transaction_receipt(log["transactionHash"])
                    gas_by_tx[tx_hash] = int(found["gasUsed"])
        events = [
            self._decode_event(log, gas_used=gas_by_tx[bytes(log["transactionHash"])])
            for log in logs
            if self._is_batch_anchored(log)
        ]
        return sorted(events, key=lambda event: (event.block_number, event.log_index))

    def _is_batch_anchored(self, log: LogReceipt) -> bool:
        return (
            self.address is not None
            and to_checksum_address(log["address"]) == self.address
            and len(log["topics"]) == 2
            and bytes(log["topics"][0]) == self._event_topic
        )

    def _decode_event(self, log: LogReceipt, *, gas_used: int) -> BatchAnchoredEvent:
        first_seq, count, root, head = abi_decode(
            ["uint64", "uint32", "bytes32", "bytes32"], bytes(log["data"])
        )
        return BatchAnchoredEvent(
            batch_id=int.from_bytes(bytes(log["topics"][1]), "big"),
            first_seq=int(first_seq),
            count=int(count),
            root=bytes(root),
            head=bytes(head),
            tx_hash=bytes(log["transactionHash"]),
            block_number=int(log["blockNumber"]),
            block_hash=bytes(log["blockHash"]),
            log_index=int(log["logIndex"]),
            gas_used=gas_used,
        )
