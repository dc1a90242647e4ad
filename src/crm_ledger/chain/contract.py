"""What every contract client shares: chain facts, views, locally signed transactions.

Exports: `ContractClient`, `Fees`, `SentTransaction`, `poll_until_found`, `show_arguments`,
`EMPTY_CODE_HASH`, `GAS_HEADROOM_DIVISOR`.

Errors (see `crm_ledger.errors`): the client reaches its node through a `chain.rpc.RpcNode`, so
any transport failure (connection refused, timeout, an HTTP error status, a body that is not
JSON-RPC) and any error the node answers with becomes `ChainUnavailable`, whose message names the
node by its URL without credentials or path. It is raised without the underlying exception
chained, since that can carry the full URL. A revert is left to the subclass: `ContractClient`
only decodes it (`_decode_revert`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_typing import ABIError, ABIEvent, ChecksumAddress, Hash32, HexStr
from eth_utils.abi import (
    abi_to_signature,
    event_signature_to_log_topic,
    function_signature_to_4byte_selector,
)
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.exceptions import BlockNotFound, ContractLogicError, TransactionNotFound
from web3.types import Nonce, TxParams, TxReceipt, Wei

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.rpc import RpcNode
from crm_ledger.errors import ChainUnavailable

__all__ = [
    "EMPTY_CODE_HASH",
    "GAS_HEADROOM_DIVISOR",
    "ContractClient",
    "Fees",
    "SentTransaction",
    "poll_until_found",
    "show_arguments",
]

#: keccak256 of empty code: what `code_hash` returns for an address without a contract.
EMPTY_CODE_HASH = keccak(b"")
#: Gas limit = estimate + estimate / GAS_HEADROOM_DIVISOR (20 %), for state that changes between
#: estimation and inclusion.
GAS_HEADROOM_DIVISOR = 5

_Found = TypeVar("_Found")


@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fee caps of a transaction, in wei."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True, slots=True)
class SentTransaction:
    """A transaction this client signed and sent: what a replacement must reuse or outbid."""

    tx_hash: bytes
    nonce: int
    fees: Fees


async def poll_until_found(
    fetch: Callable[[], Awaitable[_Found | None]], timeout: float, poll_seconds: float
) -> _Found | None:
    """What `fetch()` returns once it is not None, or None if that takes over `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = await fetch()
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(poll_seconds)


def show_arguments(arguments: Sequence[Any]) -> str:
    """A custom error's arguments as a person reads them: bytes in hex."""
    return ", ".join(
        "0x" + argument.hex() if isinstance(argument, bytes) else str(argument)
        for argument in arguments
    )


class ContractClient:
    """One contract over JSON-RPC: chain facts, views, transactions signed locally.

    The `AsyncWeb3` and the signer come in from outside; the client neither opens nor closes
    connections. `address` may be None until the contract is deployed; views and transactions
    need it. Subclasses name their artifact in `contract_name` and add the contract's methods.
    """

    #: The compiled contract (`chain/artifacts/<contract_name>.json`) the client speaks to.
    contract_name: ClassVar[str]

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        signer: LocalAccount,
        address: str | None,
        *,
        abi: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        artifact = load_artifact(self.contract_name)
        self._w3 = w3
        self._node = RpcNode(w3.provider)
        self._signer = signer
        self._abi = list(abi if abi is not None else artifact.abi)
        self._bytecode = artifact.bytecode
        self.address: ChecksumAddress | None = (
            to_checksum_address(address) if address is not None else None
        )
        self._contract = w3.eth.contract(address=self.address, abi=self._abi)
        self._errors = _error_decoders(self._abi)
        self._chain_id: int | None = None

    @property
    def rpc_url(self) -> str:
        """The node's URL, without credentials, path or query."""
        return self._node.url

    @property
    def signer_address(self) -> ChecksumAddress:
        """The account that signs this client's transactions."""
        return self._signer.address

    # Chain -------------------------------------------------------------------------------

    async def chain_id(self) -> int:
        """The node's chain id."""
        with self._node.transport("eth_chainId"):
            return int(await self._w3.eth.chain_id)

    async def genesis_hash(self) -> bytes:
        """Hash of block 0: it changes when a dev chain is reset or replaced."""
        genesis = await self.block_hash(0)
        if genesis is None:
            raise ChainUnavailable(f"the node at {self.rpc_url} has no block 0")
        return genesis

    async def block_number(self) -> int:
        """Number of the latest block."""
        with self._node.transport("eth_blockNumber"):
            return int(await self._w3.eth.block_number)

    async def block_hash(self, number: int) -> bytes | None:
        """Hash of block `number` on the node's current chain, or None beyond its head."""
        with self._node.transport("eth_getBlockByNumber"):
            try:
                block = await self._w3.eth.get_block(number)
            except BlockNotFound:
                return None
        return bytes(block["hash"])

    async def code_hash(self, address: str) -> bytes:
        """keccak256 of the code at `address` (`EMPTY_CODE_HASH` when there is none)."""
        with self._node.transport("eth_getCode"):
            code = await self._w3.eth.get_code(to_checksum_address(address))
        return keccak(bytes(code))

    # For subclasses ----------------------------------------------------------------------

    def _bound_contract(self) -> Any:
        if self.address is None:
            raise ValueError(
                f"this {type(self).__name__} client has no contract address: use `at(address)`"
            )
        return self._contract

    def _topic(self, event: str) -> bytes:
        """topic0 of the ABI's event `event`."""
        entry = next(
            item for item in self._abi if item["type"] == "event" and item["name"] == event
        )
        return event_signature_to_log_topic(abi_to_signature(cast(ABIEvent, entry)))

    async def _view(self, name: str, *args: Any) -> Any:
        """The view function `name(*args)`; a revert raises web3's `ContractLogicError`."""
        function = getattr(self._bound_contract().functions, name)
        with self._node.transport(f"eth_call {name}"):
            return await function(*args).call()

    async def _send_deployment(
        self, constructor_types: Sequence[str], arguments: list[Any]
    ) -> bytes:
        """Sign and send the contract's creation; returns the transaction hash.

        A constructor that would revert raises web3's `ContractLogicError`.
        """
        encoded = abi_encode(constructor_types, arguments)
        data = HexStr("0x" + (self._bytecode + encoded).hex())
        gas = await self._estimate_gas({"data": data})
        return await self._sign_and_send({"data": data, "gas": gas})

    async def _estimate_gas(self, params: TxParams) -> int:
        """The gas limit to send `params` with (`_gas_limit` of the node's estimate).

        A transaction that would revert raises web3's `ContractLogicError`.
        """
        with self._node.transport("eth_estimateGas"):
            estimate = int(await self._w3.eth.estimate_gas({**params, "from": self.signer_address}))
        return self._gas_limit(estimate)

    def _gas_limit(self, estimate: int) -> int:
        return estimate + estimate // GAS_HEADROOM_DIVISOR

    async def fee_quote(self) -> Fees:
        """What a transaction should offer now: the node's tip, and twice the base fee on top.

        Twice the base fee stays valid through six full blocks of base-fee increases.
        """
        with self._node.transport("eth_getBlockByNumber"):
            latest = await self._w3.eth.get_block("latest")
        with self._node.transport("eth_maxPriorityFeePerGas"):
            priority_fee = int(await self._w3.eth.max_priority_fee)
        base_fee = int(latest.get("baseFeePerGas", 0))
        return Fees(
            max_fee_per_gas=2 * base_fee + priority_fee, max_priority_fee_per_gas=priority_fee
        )

    async def account_nonce(self) -> int:
        """How many transactions of the signer the latest block holds (its next nonce to mine)."""
        with self._node.transport("eth_getTransactionCount"):
            return int(await self._w3.eth.get_transaction_count(self.signer_address, "latest"))

    async def sent_transaction(self, tx_hash: bytes) -> SentTransaction | None:
        """Nonce and fees of transaction `tx_hash` as the node knows it, or None if it does not.

        A legacy transaction's gas price stands for both fee caps.
        """
        with self._node.transport("eth_getTransactionByHash"):
            try:
                found = await self._w3.eth.get_transaction(Hash32(tx_hash))
            except TransactionNotFound:
                return None
        max_fee = int(found.get("maxFeePerGas", found.get("gasPrice", 0)))
        priority = int(found.get("maxPriorityFeePerGas", found.get("gasPrice", 0)))
        return SentTransaction(
            tx_hash=tx_hash, nonce=int(found["nonce"]), fees=Fees(max_fee, priority)
        )

    async def _sign_and_send(self, params: TxParams) -> bytes:
        """Fill nonce (from "pending"), EIP-1559 fees and chain id; sign locally; send raw."""
        return (await self._sign_and_send_transaction(params)).tx_hash

    async def _sign_and_send_transaction(
        self, params: TxParams, *, nonce: int | None = None, fees: Fees | None = None
    ) -> SentTransaction:
        """Sign `params` locally and send it raw: the nonce from "pending" and `fee_quote()`
        unless given (a replacement passes the nonce it replaces and higher fees)."""
        with self._node.transport("preparing a transaction"):
            if self._chain_id is None:
                self._chain_id = int(await self._w3.eth.chain_id)
            if nonce is None:
                nonce = await self._w3.eth.get_transaction_count(self.signer_address, "pending")
        if fees is None:
            fees = await self.fee_quote()
        transaction: TxParams = {
            **params,
            "value": Wei(0),
            "nonce": Nonce(nonce),
            "chainId": self._chain_id,
            "type": 2,
            "maxPriorityFeePerGas": Wei(fees.max_priority_fee_per_gas),
            "maxFeePerGas": Wei(fees.max_fee_per_gas),
        }
        signed = self._signer.sign_transaction(cast(dict[str, Any], transaction))
        with self._node.transport("eth_sendRawTransaction"):
            await self._w3.eth.send_raw_transaction(signed.raw_transaction)
        return SentTransaction(tx_hash=bytes(signed.hash), nonce=nonce, fees=fees)

    async def _raw_receipt(self, tx_hash: bytes) -> TxReceipt | None:
        with self._node.transport("eth_getTransactionReceipt"):
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


def _error_decoders(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    """Custom error selector -> (name, argument types)."""
    decoders: dict[bytes, tuple[str, list[str]]] = {}
    for entry in abi:
        if entry["type"] == "error":
            types = [argument["type"] for argument in entry["inputs"]]
            selector = function_signature_to_4byte_selector(abi_to_signature(cast(ABIError, entry)))
            decoders[selector] = (entry["name"], types)
    return decoders
