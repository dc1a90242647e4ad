"""The async AuditLedger client: the only code that talks JSON-RPC to the chain.

Exports: `LedgerChain`, `AnchorReceipt`, `BatchEvent`, `LedgerBatch`, `LedgerDeployment`,
`make_async_web3`, `redact_url`, `EMPTY_CODE_HASH`.

Errors (see `crm_ledger.errors`): any transport failure (connection refused, timeout, an HTTP
error status, a body that is not JSON-RPC) and any error the node answers with becomes
`ChainUnavailable`, whose message names the node by its URL without credentials or path; a
revert of `anchor` becomes `AnchorRejected`. Both are raised without the underlying exception
chained, since those can carry the full URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, Hash32, HexAddress, HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BadResponseFormat,
    BlockNotFound,
    ContractLogicError,
    ProviderConnectionError,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import FilterParams, LogReceipt, TxParams, TxReceipt, Wei

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.errors import AnchorRejected, ChainError, ChainUnavailable

__all__ = [
    "EMPTY_CODE_HASH",
    "AnchorReceipt",
    "BatchEvent",
    "LedgerBatch",
    "LedgerChain",
    "LedgerDeployment",
    "make_async_web3",
    "redact_url",
]

#: keccak256 of empty code: what `code_hash` returns for an address without a contract.
EMPTY_CODE_HASH = keccak(b"")
ZERO_ADDRESS = ChecksumAddress(HexAddress(HexStr("0x" + "00" * 20)))
#: Gas limit = estimate + estimate / GAS_HEADROOM_DIVISOR (20 %), for state that changes between
#: estimation and inclusion.
GAS_HEADROOM_DIVISOR = 5
#: Block range per eth_getLogs request; public providers cap ranges at a few thousand blocks.
LOG_CHUNK_BLOCKS = 2_000

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,  # connection refused/reset; TimeoutError is an OSError
    ProviderConnectionError,
    BadResponseFormat,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


@dataclass(frozen=True, slots=True)
class LedgerBatch:
    """A batch as the contract's `batch(id)` view returns it."""

    batch_id: int
    first_seq: int
    count: int
    root: bytes


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One `BatchAnchored` event, where it was logged, and the gas its transaction used."""

    batch_id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    gas_used: int


@dataclass(frozen=True, slots=True)
class AnchorReceipt:
    """A mined, successful anchor transaction and the batch it created."""

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    gas_used: int
    effective_gas_price: int
    batch_id: int
    first_seq: int
    count: int
    root: bytes
    head: bytes


@dataclass(frozen=True, slots=True)
class LedgerDeployment:
    """A freshly deployed AuditLedger contract."""

    address: ChecksumAddress
    tx_hash: bytes
    block_number: int
    code_hash: bytes
    gas_used: int


def make_async_web3(rpc_url: str, timeout: float) -> AsyncWeb3[AsyncHTTPProvider]:
    """An `AsyncWeb3` over HTTP that fails fast: `timeout` seconds per request, no retries.

    The anchorer retries on its own schedule, so the provider's retries would only delay the
    `ChainUnavailable` it needs to see. Close it with `await w3.provider.disconnect()`.
    """
    provider = AsyncHTTPProvider(
        rpc_url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
        exception_retry_configuration=None,
    )
    return AsyncWeb3(provider)


def redact_url(url: str) -> str:
    """`url` without credentials, path or query, which may hold an API key."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable RPC URL>"
    if ":" in host:
        host = f"[{host}]"
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


class LedgerChain:
    """AuditLedger over JSON-RPC: reads, anchors signed locally, receipts and events.

    The `AsyncWeb3` and the signer come in from outside; the client neither opens nor closes
    connections. `address` may be None until the contract is deployed (`deploy_ledger`, then
    `at(address)`); the ledger methods need it.

    Example::

        w3 = make_async_web3("http://127.0.0.1:8545", timeout=10)
        chain = LedgerChain(w3, load_signer(settings, chain_id=await w3.eth.chain_id), address)
        tx_hash = await chain.send_anchor(first_seq=0, count=3, root=root)
        receipt = await chain.wait_for_receipt(tx_hash, timeout=30)
        assert receipt is not None and await chain.next_seq() == 3
        event = await chain.find_batch_event(receipt.batch_id)
        await w3.provider.disconnect()
    """

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        signer: LocalAccount,
        address: str | None,
        *,
        abi: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        artifact = load_artifact("AuditLedger")
        self._w3 = w3
        self._signer = signer
        self._abi = list(abi if abi is not None else artifact.abi)
        self._bytecode = artifact.bytecode
        self.address: ChecksumAddress | None = (
            to_checksum_address(address) if address is not None else None
        )
        self._contract = w3.eth.contract(address=self.address, abi=self._abi)
        self._errors = _error_decoders(self._abi)
        self._event_topic = _event_topic(self._abi, "BatchAnchored")
        self._chain_id: int | None = None

    def __repr__(self) -> str:
        return f"LedgerChain({self.rpc_url}, address={self.address}, signer={self.signer_address})"

    @property
    def rpc_url(self) -> str:
        """The node's URL, without credentials, path or query."""
        endpoint = getattr(self._w3.provider, "endpoint_uri", None)
        return (
            redact_url(str(endpoint)) if endpoint is not None else type(self._w3.provider).__name__
        )

    @property
    def signer_address(self) -> ChecksumAddress:
        """The account that signs anchor and deployment transactions."""
        return self._signer.address

    def at(self, address: str) -> LedgerChain:
        """The same node and signer, bound to the AuditLedger at `address`."""
        return LedgerChain(self._w3, self._signer, address, abi=self._abi)

    # Chain -------------------------------------------------------------------------------

    async def chain_id(self) -> int:
        """The node's chain id."""
        with self._transport("eth_chainId"):
            return await self._w3.eth.chain_id

    async def genesis_hash(self) -> bytes:
        """Hash of block 0: it changes when a dev chain is reset or replaced."""
        genesis = await self.block_hash(0)
        if genesis is None:
            raise ChainUnavailable(f"the node at {self.rpc_url} has no block 0")
        return genesis

    async def block_number(self) -> int:
        """Number of the latest block."""
        with self._transport("eth_blockNumber"):
            return await self._w3.eth.block_number

    async def block_hash(self, number: int) -> bytes | None:
        """Hash of block `number` on the node's current chain, or None beyond its head."""
        with self._transport("eth_getBlockByNumber"):
            try:
                block = await self._w3.eth.get_block(number)
            except BlockNotFound:
                return None
        return bytes(block["hash"])

    async def code_hash(self, address: str) -> bytes:
        """keccak256 of the code at `address` (`EMPTY_CODE_HASH` when there is none)."""
        with self._transport("eth_getCode"):
            code = await self._w3.eth.get_code(to_checksum_address(address))
        return keccak(bytes(code))

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

    async def batch(self, batch_id: int) -> LedgerBatch | None:
        """Batch `batch_id` as the contract stores it, or None if there is no such batch."""
        found = await self._view_or_unknown_batch("batch", batch_id)
        if found is None:
            return None
        first_seq, count, root = found
        return LedgerBatch(batch_id=batch_id, first_seq=first_seq, count=count, root=bytes(root))

    # Anchoring ---------------------------------------------------------------------------

    async def send_anchor(self, first_seq: int, count: int, root: bytes) -> bytes:
        """Sign and send `anchor(first_seq, count, root)`; returns the transaction hash.

        Raises `AnchorRejected` when the contract would revert (checked by gas estimation), with
        `chain_next_seq` set when the batch is out of order.
        """
        contract = self._bound_contract()
        data = contract.encode_abi("anchor", args=[first_seq, count, root])
        try:
            gas = await self._estimate_gas({"to": contract.address, "data": data})
        except ContractLogicError as exc:
            raise self._rejected(exc, first_seq) from None
        return await self._sign_and_send({"to": contract.address, "data": data, "gas": gas})

    async def receipt(self, tx_hash: bytes) -> AnchorReceipt | None:
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
        return AnchorReceipt(
            tx_hash=bytes(raw["transactionHash"]),
            block_number=int(raw["blockNumber"]),
            block_hash=bytes(raw["blockHash"]),
            gas_used=int(raw["gasUsed"]),
            effective_gas_price=int(raw.get("effectiveGasPrice", 0)),
            batch_id=event.batch_id,
            first_seq=event.first_seq,
            count=event.count,
            root=event.root,
            head=event.head,
        )

    async def wait_for_receipt(
        self, tx_hash: bytes, timeout: float, *, poll_seconds: float = 0.05
    ) -> AnchorReceipt | None:
        """`receipt(tx_hash)` once it exists, or None if it does not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.receipt(tx_hash)
            if found is not None or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(poll_seconds)

    # Events ------------------------------------------------------------------------------

    async def find_batch_event(self, batch_id: int, from_block: int = 0) -> BatchEvent | None:
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
    ) -> list[BatchEvent]:
        """Every `BatchAnchored` event in blocks `from_block`..`to_block` (default: latest).

        Queried `chunk_blocks` blocks at a time, in chain order.
        """
        last = to_block if to_block is not None else await self.block_number()
        events: list[BatchEvent] = []
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
        arguments = abi_encode(types, [self.signer_address, self.signer_address, epoch, previous])
        data = HexStr("0x" + (self._bytecode + arguments).hex())
        try:
            gas = await self._estimate_gas({"data": data})
        except ContractLogicError as exc:
            raise ChainError(
                f"deploying AuditLedger epoch {epoch} on {self.rpc_url} would revert: {exc}"
            ) from None
        tx_hash = await self._sign_and_send({"data": data, "gas": gas})
        deadline = time.monotonic() + receipt_timeout
        raw = await self._raw_receipt(tx_hash)
        while raw is None:
            if time.monotonic() >= deadline:
                raise ChainUnavailable(
                    f"the AuditLedger deployment 0x{tx_hash.hex()} was not mined on "
                    f"{self.rpc_url} within {receipt_timeout:.0f} s"
                )
            await asyncio.sleep(0.05)
            raw = await self._raw_receipt(tx_hash)
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

    @contextlib.contextmanager
    def _transport(self, doing: str) -> Iterator[None]:
        """Turn transport failures and node errors into `ChainUnavailable`."""
        try:
            yield
        except Web3RPCError as exc:
            raise ChainUnavailable(
                f"the node at {self.rpc_url} answered {doing} with an error: "
                f"{self._scrub(exc.message)}"
            ) from None
        except _TRANSPORT_ERRORS as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            raise ChainUnavailable(
                f"cannot reach the chain at {self.rpc_url} ({doing}): {reason}"
            ) from None

    def _scrub(self, text: str) -> str:
        """`text` with the full endpoint URL, which may hold an API key, redacted."""
        endpoint = getattr(self._w3.provider, "endpoint_uri", None)
        return text.replace(str(endpoint), self.rpc_url) if endpoint else text

    def _bound_contract(self) -> Any:
        if self.address is None:
            raise ValueError("this LedgerChain has no contract address: use `at(address)`")
        return self._contract

    async def _view(self, name: str, *args: Any) -> Any:
        function = getattr(self._bound_contract().functions, name)
        with self._transport(f"eth_call {name}"):
            return await function(*args).call()

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

    async def _estimate_gas(self, params: TxParams) -> int:
        with self._transport("eth_estimateGas"):
            estimate = await self._w3.eth.estimate_gas({**params, "from": self.signer_address})
        return estimate + estimate // GAS_HEADROOM_DIVISOR

    async def _sign_and_send(self, params: TxParams) -> bytes:
        """Fill nonce (from "pending"), EIP-1559 fees and chain id; sign locally; send raw."""
        sender = self.signer_address
        with self._transport("preparing a transaction"):
            if self._chain_id is None:
                self._chain_id = await self._w3.eth.chain_id
            nonce = await self._w3.eth.get_transaction_count(sender, "pending")
            latest = await self._w3.eth.get_block("latest")
            priority_fee = await self._w3.eth.max_priority_fee
        base_fee = int(latest.get("baseFeePerGas", 0))
        transaction: TxParams = {
            **params,
            "value": Wei(0),
            "nonce": nonce,
            "chainId": self._chain_id,
            "type": 2,
            "maxPriorityFeePerGas": priority_fee,
            # Twice the base fee stays valid through six full blocks of base-fee increases.
            "maxFeePerGas": Wei(2 * base_fee + priority_fee),
        }
        signed = self._signer.sign_transaction(cast(dict[str, Any], transaction))
        with self._transport("eth_sendRawTransaction"):
            await self._w3.eth.send_raw_transaction(signed.raw_transaction)
        return bytes(signed.hash)

    async def _raw_receipt(self, tx_hash: bytes) -> TxReceipt | None:
        with self._transport("eth_getTransactionReceipt"):
            try:
                return await self._w3.eth.get_transaction_receipt(Hash32(tx_hash))
            except TransactionNotFound:
                return None

    def _decode_revert(self, exc: ContractLogicError) -> tuple[str, tuple[Any, ...]] | None:
        """(custom error name, arguments) of a revert, if it is one of the ABI's errors."""
        data = exc.data.get("data") if isinstance(exc.data, dict) else exc.data
        if not isinstance(data, str) or not data.startswith("0x") or len(data) < 10:
            return None
        raw = bytes.fromhex(data[2:])
        decoder = self._errors.get(raw[:4])
        if decoder is None:
            return None
        name, types = decoder
        try:
            return name, tuple(abi_decode(types, raw[4:]))
        except Exception:
            return None

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
        shown = ", ".join(_show(argument) for argument in arguments)
        return AnchorRejected(
            f"AuditLedger at {self.address} rejects the batch at seq {first_seq}: {name}({shown})",
            first_seq=first_seq,
            chain_next_seq=None,
        )

    async def _reverted_on_chain(self, raw: TxReceipt) -> AnchorRejected:
        """Why a mined anchor failed (it passed estimation, so: a race, or out of gas)."""
        tx_hash = bytes(raw["transactionHash"])
        with self._transport("eth_getTransactionByHash"):
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

    def _batch_event_from(self, raw: TxReceipt) -> BatchEvent:
        for log in raw["logs"]:
            if self._is_batch_anchored(log):
                return self._decode_event(log, gas_used=int(raw["gasUsed"]))
        raise ChainError(
            f"transaction 0x{bytes(raw['transactionHash']).hex()} holds no BatchAnchored event "
            f"of the AuditLedger at {self.address}: it is not one of this ledger's anchors"
        )

    async def _batch_events_between(
        self, from_block: int, to_block: int, *, batch_ids: Sequence[int] | None
    ) -> list[BatchEvent]:
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
        with self._transport("eth_getLogs"):
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

    def _decode_event(self, log: LogReceipt, *, gas_used: int) -> BatchEvent:
        first_seq, count, root, head = abi_decode(
            ["uint64", "uint32", "bytes32", "bytes32"], bytes(log["data"])
        )
        return BatchEvent(
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


def _error_decoders(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    """Custom error selector -> (name, argument types)."""
    decoders: dict[bytes, tuple[str, list[str]]] = {}
    for entry in abi:
        if entry["type"] == "error":
            types = [argument["type"] for argument in entry["inputs"]]
            selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
            decoders[selector] = (entry["name"], types)
    return decoders


def _event_topic(abi: Sequence[dict[str, Any]], name: str) -> bytes:
    entry = next(item for item in abi if item["type"] == "event" and item["name"] == name)
    types = ",".join(argument["type"] for argument in entry["inputs"])
    return keccak(text=f"{name}({types})")


def _show(argument: Any) -> str:
    return "0x" + argument.hex() if isinstance(argument, bytes) else str(argument)
