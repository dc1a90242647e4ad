"""The AuditLedger reads over plain JSON-RPC: httpx for the transport, eth_abi for the words.

Exports: `JsonRpcChain`, `connect`.

An `AuditChain` with no web3 behind it, so the client library and anyone else who verifies a
receipt can do it with two small dependencies. Every transport failure or node error is
`ChainUnavailable`; errors name the node by scheme, host and port only (an RPC URL often
carries an API key in its path or query) and never chain the underlying exception.

Example::

    async with connect("http://127.0.0.1:8545", contract, timeout=10) as chain:
        check = await verify_record(receipt=receipt, content=None, key=None, chain=chain,
                                    expected_contract=contract)
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from crm_ledger.errors import ChainError, ChainUnavailable
from crm_ledger.ledger.hexcodec import hex0x
from crm_ledger.verifier.chain import BatchAnchoredEvent, BatchOnChain

#: Block range per eth_getLogs request; public providers cap ranges at a few thousand blocks.
LOG_CHUNK_BLOCKS = 2_000

_BATCH_ANCHORED = keccak(b"BatchAnchored(uint256,uint64,uint32,bytes32,bytes32)")
_UNKNOWN_BATCH = keccak(b"AuditLedgerUnknownBatch(uint256)")[:4]


def _selector(signature: str) -> bytes:
    return keccak(signature.encode("ascii"))[:4]


def _bytes(value: object) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainUnavailable(f"the node answered {value!r} where hex data was expected")
    return bytes.fromhex(value[2:])


def _int(value: object) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ChainUnavailable(f"the node answered {value!r} where a hex quantity was expected")
    return int(value, 16)


class JsonRpcChain:
    """`AuditChain` for the AuditLedger at `address`, over `http` (an `httpx.AsyncClient` the
    caller owns) posting JSON-RPC to `rpc_url`."""

    def __init__(self, http: httpx.AsyncClient, rpc_url: str, address: str) -> None:
        self._http = http
        self._url = rpc_url
        self._address = address.lower()
        self._ids = itertools.count(1)
        parsed = httpx.URL(rpc_url)
        port = f":{parsed.port}" if parsed.port else ""
        self._where = f"{parsed.scheme}://{parsed.host}{port}"

    def at(self, address: str) -> JsonRpcChain:
        """The same node, bound to the AuditLedger at `address`."""
        return JsonRpcChain(self._http, self._url, address)

    async def _call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            answer = await self._http.post(self._url, json=body)
            answer.raise_for_status()
            data = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChainUnavailable(
                f"{method} on {self._where} failed: {type(exc).__name__}"
            ) from None
        if not isinstance(data, dict):
            raise ChainUnavailable(f"{method} on {self._where} answered no JSON-RPC object")
        if "error" in data:
            error = data["error"] if isinstance(data["error"], dict) else {}
            if _UNKNOWN_BATCH.hex() in str(error.get("data", "")):
                raise _UnknownBatch
            if method == "eth_call" and error.get("data"):
                raise ChainError(f"the call reverted on {self._where}: {error.get('message')}")
            raise ChainUnavailable(
                f"{method} on {self._where} failed: {error.get('message', 'node error')}"
            )
        return data.get("result")

    async def _view(self, signature: str, types: Sequence[str], *args: int) -> tuple[Any, ...]:
        arg_types = signature[signature.index("(") + 1 : -1]
        data = _selector(signature) + (
            abi_encode(arg_types.split(","), list(args)) if arg_types else b""
        )
        result = _bytes(
            await self._call("eth_call", {"to": self._address, "data": hex0x(data)}, "latest")
        )
        if not result:
            raise ChainError(
                f"{signature} at {self._address} returned nothing: no AuditLedger there"
            )
        return tuple(abi_decode(list(types), result))

    async def chain_id(self) -> int:
        """The node's chain id."""
        return _int(await self._call("eth_chainId"))

    async def genesis_hash(self) -> bytes:
        """Hash of block 0."""
        found = await self.block_hash(0)
        if found is None:
            raise ChainUnavailable(f"the node at {self._where} has no block 0")
        return found

    async def code_hash(self, address: str) -> bytes:
        """keccak256 of the code at `address`."""
        return keccak(_bytes(await self._call("eth_getCode", address.lower(), "latest")))

    async def next_seq(self) -> int:
        """The sequence number the next batch must start at."""
        return int((await self._view("nextSeq()", ["uint64"]))[0])

    async def head(self) -> bytes:
        """The running ledger head."""
        return bytes((await self._view("head()", ["bytes32"]))[0])

    async def batch_count(self) -> int:
        """How many batches the contract holds."""
        return int((await self._view("batchCount()", ["uint256"]))[0])

    async def batch(self, batch_id: int) -> BatchOnChain | None:
        """Batch `batch_id` as the contract stores it, or None if there is none."""
        try:
            first_seq, count, root = await self._view(
                "batch(uint256)", ["uint64", "uint32", "bytes32"], batch_id
            )
        except _UnknownBatch:
            return None
        return BatchOnChain(
            batch_id=batch_id, first_seq=int(first_seq), count=int(count), root=bytes(root)
        )

    async def find_batch_event(
        self, batch_id: int, from_block: int = 0
    ) -> BatchAnchoredEvent | None:
        """The `BatchAnchored` event of `batch_id` at or after `from_block`, or None."""
        try:
            (block,) = await self._view("batchBlockNumber(uint256)", ["uint64"], batch_id)
        except _UnknownBatch:
            return None
        if block < from_block:
            return None
        found = await self._logs(int(block), int(block), batch_id=batch_id)
        return found[-1] if found else None

    async def batch_events(
        self, from_block: int, to_block: int | None = None
    ) -> list[BatchAnchoredEvent]:
        """Every `BatchAnchored` event in blocks `from_block`..`to_block` (default: latest)."""
        last = to_block if to_block is not None else _int(await self._call("eth_blockNumber"))
        events: list[BatchAnchoredEvent] = []
        for start in range(from_block, last + 1, LOG_CHUNK_BLOCKS):
            events += await self._logs(start, min(start + LOG_CHUNK_BLOCKS - 1, last))
        return events

    async def receipt(self, tx_hash: bytes) -> BatchAnchoredEvent | None:
        """The mined anchor transaction `tx_hash` and its batch, or None while unknown."""
        raw = await self._call("eth_getTransactionReceipt", hex0x(tx_hash))
        if raw is None:
            return None
        if _int(raw["status"]) != 1:
            raise ChainError(f"transaction {hex0x(tx_hash)} reverted: it anchored nothing")
        for log in raw.get("logs", []):
            if self._is_batch_anchored(log):
                return self._decode(log)
        raise ChainError(
            f"transaction {hex0x(tx_hash)} holds no BatchAnchored event of the AuditLedger at "
            f"{self._address}: it is not one of this ledger's anchors"
        )

    async def block_hash(self, number: int) -> bytes | None:
        """Hash of block `number` on the node's current chain, or None beyond its head."""
        block = await self._call("eth_getBlockByNumber", hex(number), False)
        return None if block is None else _bytes(block["hash"])

    async def _logs(
        self, from_block: int, to_block: int, *, batch_id: int | None = None
    ) -> list[BatchAnchoredEvent]:
        topics: list[Any] = [hex0x(_BATCH_ANCHORED)]
        if batch_id is not None:
            topics.append(hex0x(batch_id.to_bytes(32, "big")))
        query = {
            "address": self._address,
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
            "topics": topics,
        }
        logs = await self._call("eth_getLogs", query)
        events = [self._decode(log) for log in logs if self._is_batch_anchored(log)]
        return sorted(events, key=lambda event: (event.block_number, event.log_index))

    def _is_batch_anchored(self, log: dict[str, Any]) -> bool:
        topics = log.get("topics", [])
        return (
            str(log.get("address", "")).lower() == self._address
            and len(topics) == 2
            and _bytes(topics[0]) == _BATCH_ANCHORED
        )

    def _decode(self, log: dict[str, Any]) -> BatchAnchoredEvent:
        first_seq, count, root, head = abi_decode(
            ["uint64", "uint32", "bytes32", "bytes32"], _bytes(log["data"])
        )
        return BatchAnchoredEvent(
            batch_id=int.from_bytes(_bytes(log["topics"][1]), "big"),
            first_seq=int(first_seq),
            count=int(count),
            root=bytes(root),
            head=bytes(head),
            tx_hash=_bytes(log["transactionHash"]),
            block_number=_int(log["blockNumber"]),
            block_hash=_bytes(log["blockHash"]),
            log_index=_int(log["logIndex"]),
        )


class _UnknownBatch(Exception):
    """The contract reverted with AuditLedgerUnknownBatch."""


@asynccontextmanager
async def connect(rpc_url: str, address: str, *, timeout: float) -> AsyncIterator[JsonRpcChain]:
    """A `JsonRpcChain` over its own HTTP connection, closed on exit."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        yield JsonRpcChain(http, rpc_url, address)
