"""What the indexer reads from the chain, over raw JSON-RPC, checked field by field.

Exports: `ChainSource`, `JsonRpcSource`, `BATCH_SIZE`; `ChainReader`, `SourceReader` (the
contract reads reconciliation makes through a source).

The indexer asks for tens of thousands of logs at a time, so `JsonRpcSource` skips web3.py's
result formatters and reads the node's JSON itself: every field is checked for type and size,
every log for the address, topics and block range that were asked for, and two logs of one
block must agree on its hash. Requests go through a `chain.rpc.RpcNode`, as the contract
clients' do: whatever fails (a refused connection, a timeout, an HTTP error, a body that is not
JSON-RPC, an error object, and here also a field of the wrong shape) becomes `ChainUnavailable`,
whose message names the node without credentials: the indexer backs off and asks again, and
nothing of a bad answer is written.

Example::

    source = JsonRpcSource(make_async_web3("http://127.0.0.1:8545", timeout=10))
    head = await source.head()
    logs = await source.logs(
        addresses=[ledger_address], topics=AUDIT_LEDGER_TOPICS, from_block=7, to_block=head
    )
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.crypto import keccak
from web3 import AsyncWeb3

from crm_ledger.chain.rpc import RpcNode, answered_garbage
from crm_ledger.errors import ChainError
from crm_ledger.indexer.events import RawLog

__all__ = ["BATCH_SIZE", "ChainReader", "ChainSource", "JsonRpcSource", "SourceReader"]

#: Requests per JSON-RPC batch (block hashes to check logs against).
BATCH_SIZE = 500


class ChainSource(Protocol):
    """What the indexer needs from a node; `JsonRpcSource` is the real one."""

    @property
    def rpc_url(self) -> str: ...
    async def chain_id(self) -> int: ...
    async def head(self) -> int: ...
    async def block_hash(self, number: int) -> bytes | None: ...
    async def block_hashes(self, numbers: Sequence[int]) -> dict[int, bytes | None]: ...
    async def code_hash(self, address: str) -> bytes: ...
    async def call(self, address: str, data: bytes) -> bytes: ...
    async def logs(
        self,
        *,
        addresses: Sequence[str],
        topics: Sequence[bytes],
        from_block: int,
        to_block: int,
    ) -> list[RawLog]: ...


class JsonRpcSource:
    """`ChainSource` over an `AsyncWeb3`'s provider; the caller opens and closes the provider."""

    def __init__(self, w3: AsyncWeb3[Any]) -> None:
        self._provider = w3.provider
        self._node = RpcNode(w3.provider)

    @property
    def rpc_url(self) -> str:
        """The node's URL, without credentials, path or query."""
        return self._node.url

    async def chain_id(self) -> int:
        """The node's chain id."""
        return _quantity(await self._node.request("eth_chainId", []), "eth_chainId", self.rpc_url)

    async def head(self) -> int:
        """Number of the latest block."""
        result = await self._node.request("eth_blockNumber", [])
        return _quantity(result, "eth_blockNumber", self.rpc_url)

    async def block_hash(self, number: int) -> bytes | None:
        """Hash of block `number` on the node's current chain, or None beyond its head."""
        doing = f"eth_getBlockByNumber({number})"
        block = await self._node.request("eth_getBlockByNumber", [hex(number), False])
        return self._block_hash_of(block, number, doing)

    def _block_hash_of(self, block: Any, number: int, doing: str) -> bytes | None:
        if block is None:
            return None
        if not isinstance(block, dict):
            raise self._node.garbage(doing, "the block is not an object")
        if _quantity(block.get("number"), doing, self.rpc_url) != number:
            raise self._node.garbage(doing, "it answered with another block")
        return _hash(block.get("hash"), doing, self.rpc_url)

    async def block_hashes(self, numbers: Sequence[int]) -> dict[int, bytes | None]:
        """Hashes of blocks `numbers` on the node's current chain (None beyond its head), in
        JSON-RPC batches of `BATCH_SIZE` requests."""
        found: dict[int, bytes | None] = {}
        wanted = sorted(set(numbers))
        for start in range(0, len(wanted), BATCH_SIZE):
            chunk = wanted[start : start + BATCH_SIZE]
            doing = f"eth_getBlockByNumber({chunk[0]}..{chunk[-1]}, batched)"
            with self._node.transport(doing):
                try:
                    responses = await self._provider.make_batch_request(
                        [("eth_getBlockByNumber", [hex(number), False]) for number in chunk]
                    )
                except (AttributeError, TypeError, KeyError) as exc:
                    # web3 sorts a batch's answers by id before returning them: answers that
                    # are not JSON-RPC objects make it fail like this.
                    raise self._node.garbage(
                        doing, f"answers that are not JSON-RPC responses ({type(exc).__name__})"
                    ) from None
            if not isinstance(responses, list) or len(responses) != len(chunk):
                raise self._node.garbage(doing, "not one answer per request")
            for number, response in zip(chunk, responses, strict=True):
                found[number] = self._block_hash_of(
                    self._node.result(response, doing), number, doing
                )
        return found

    async def code_hash(self, address: str) -> bytes:
        """keccak256 of the code at `address` (of b"" when there is none)."""
        code = await self._node.request("eth_getCode", [address, "latest"])
        return keccak(_data(code, "eth_getCode", self.rpc_url))

    async def call(self, address: str, data: bytes) -> bytes:
        """The return data of `eth_call` to `address` with `data`, at the latest block."""
        result = await self._node.request(
            "eth_call", [{"to": address, "data": "0x" + data.hex()}, "latest"]
        )
        return _data(result, "eth_call", self.rpc_url)

    async def logs(
        self,
        *,
        addresses: Sequence[str],
        topics: Sequence[bytes],
        from_block: int,
        to_block: int,
    ) -> list[RawLog]:
        """Logs of `addresses` whose topic0 is one of `topics`, in blocks `from_block`..`to_block`.

        Returned in chain order. Raises `ChainUnavailable` for an answer that is not exactly
        what was asked for.
        """
        doing = f"eth_getLogs({from_block}..{to_block})"
        wanted_addresses = {address.lower() for address in addresses}
        wanted_topics = set(topics)
        params = {
            "address": sorted(wanted_addresses),
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
            "topics": [["0x" + topic.hex() for topic in topics]],
        }
        result = await self._node.request("eth_getLogs", [params])
        if not isinstance(result, list):
            raise self._node.garbage(doing, "the result is not a list")
        reader = _LogReader(self.rpc_url, doing)
        out: list[RawLog] = []
        block_hashes: dict[int, bytes] = {}
        seen: set[tuple[int, int]] = set()
        for entry in result:
            log = reader.log(entry)
            if log.address not in wanted_addresses:
                raise self._node.garbage(doing, f"a log of {log.address}, which was not asked for")
            if not log.topics or log.topics[0] not in wanted_topics:
                raise self._node.garbage(doing, "a log with a topic that was not asked for")
            if not from_block <= log.block_number <= to_block:
                raise self._node.garbage(doing, f"a log of block {log.block_number}, out of range")
            if block_hashes.setdefault(log.block_number, log.block_hash) != log.block_hash:
                raise self._node.garbage(doing, f"two hashes for block {log.block_number}")
            key = (log.block_number, log.log_index)
            if key in seen:
                raise self._node.garbage(doing, f"log {log.log_index} of block {key[0]} twice")
            seen.add(key)
            out.append(log)
        out.sort(key=lambda log: (log.block_number, log.log_index))
        return out


def _quantity(value: Any, doing: str, url: str) -> int:
    # int(_, 16) alone would also take "0x_1", " 0x1" and non-ASCII digits.
    if (
        type(value) is str
        and value[:2] == "0x"
        and 2 < len(value) <= 66
        and value.isascii()
        and value[2:].isalnum()
    ):
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise answered_garbage(url, doing, f"expected a hex quantity, got {_shown(value)}")


def _data(value: Any, doing: str, url: str) -> bytes:
    if type(value) is str and value[:2] == "0x":
        try:
            raw = bytes.fromhex(value[2:])
        except ValueError:
            pass
        else:
            # fromhex skips whitespace: the lengths tell whether there was any.
            if 2 * len(raw) == len(value) - 2:
                return raw
    raise answered_garbage(url, doing, f"expected 0x-hex bytes, got {_shown(value)}")


def _hash(value: Any, doing: str, url: str) -> bytes:
    raw = _data(value, doing, url)
    if len(raw) != 32:
        raise answered_garbage(url, doing, f"expected 32 bytes, got {len(raw)}")
    return raw


class _LogReader:
    """Checks the logs of one answer; values that logs share (block and transaction hashes,
    block numbers, topics) are parsed once."""

    def __init__(self, url: str, doing: str) -> None:
        self.url = url
        self.doing = doing
        self._hashes: dict[str, bytes] = {}
        self._numbers: dict[str, int] = {}

    def log(self, entry: Any) -> RawLog:
        """One log of the answer, checked field by field."""
        if type(entry) is not dict:
            raise answered_garbage(self.url, self.doing, "a log is not an object")
        if entry.get("removed") is True:
            raise answered_garbage(self.url, self.doing, "a removed log")
        address = entry.get("address")
        if type(address) is not str or len(address) != 42:
            raise answered_garbage(self.url, self.doing, "a log without a valid address")
        topics = entry.get("topics")
        if type(topics) is not list or len(topics) > 4:
            raise answered_garbage(self.url, self.doing, "a log without a valid topic list")
        return RawLog(
            address=address.lower(),
            topics=tuple(self._hash(topic) for topic in topics),
            data=_data(entry.get("data"), self.doing, self.url),
            block_number=self._number(entry.get("blockNumber")),
            block_hash=self._hash(entry.get("blockHash")),
            tx_hash=self._hash(entry.get("transactionHash")),
            log_index=_quantity(entry.get("logIndex"), self.doing, self.url),
        )

    def _hash(self, value: Any) -> bytes:
        if type(value) is not str:
            return _hash(value, self.doing, self.url)
        found = self._hashes.get(value)
        if found is None:
            found = self._hashes[value] = _hash(value, self.doing, self.url)
        return found

    def _number(self, value: Any) -> int:
        if type(value) is not str:
            return _quantity(value, self.doing, self.url)
        found = self._numbers.get(value)
        if found is None:
            found = self._numbers[value] = _quantity(value, self.doing, self.url)
        return found


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


class ChainReader(Protocol):
    """The chain reads reconciliation needs beyond the index (`indexer.reconcile`)."""

    async def ledger_next_seq(self, ledger: str) -> int: ...
    async def token_issued(self, token: str, issuance_id: bytes) -> bool: ...
    async def token_balance(self, token: str, holder: str) -> int: ...


_NEXT_SEQ = function_signature_to_4byte_selector("nextSeq()")
_ISSUED = function_signature_to_4byte_selector("issued(bytes32)")
_BALANCE_OF = function_signature_to_4byte_selector("balanceOf(address)")


class SourceReader:
    """`ChainReader` over a `ChainSource` (eth_call, calldata from `eth_abi`)."""

    def __init__(self, source: ChainSource) -> None:
        self._source = source

    async def ledger_next_seq(self, ledger: str) -> int:
        """AuditLedger.nextSeq()."""
        return self._uint(await self._source.call(ledger, _NEXT_SEQ), "nextSeq()")

    async def token_issued(self, token: str, issuance_id: bytes) -> bool:
        """LoyaltyToken.issued(id)."""
        calldata = _ISSUED + abi_encode(["bytes32"], [issuance_id])
        return self._uint(await self._source.call(token, calldata), "issued") != 0

    async def token_balance(self, token: str, holder: str) -> int:
        """LoyaltyToken.balanceOf(holder)."""
        calldata = _BALANCE_OF + abi_encode(["address"], [holder])
        return self._uint(await self._source.call(token, calldata), "balanceOf")

    def _uint(self, raw: bytes, what: str) -> int:
        if len(raw) != 32:
            raise ChainError(
                f"{what} at {self._source.rpc_url} returned {len(raw)} bytes instead of 32: "
                "the contract is not the one deployed"
            )
        (value,) = abi_decode(["uint256"], raw)
        return int(value)
