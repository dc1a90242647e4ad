"""The async LoyaltyToken client: reads, signed transactions, receipts with decoded events.

Exports: `LoyaltyToken`, `TokenReceipt`, `TokenEvent`, `TokenDeployment`, `TokenRejected`,
`ISSUER_ROLE`, `REDEEMER_ROLE`, `EXPIRER_ROLE`, `TX_GAS_CAP`.

Errors follow `crm_ledger.chain.client`: transport failures and node errors become
`ChainUnavailable` naming the node without credentials; a transaction the contract would revert
(found by gas estimation) raises `TokenRejected` with the decoded custom error, and a mined
transaction that reverted comes back as a `TokenReceipt` with `status == 0`.

Example::

    w3 = make_async_web3("http://127.0.0.1:8545", timeout=10)
    token = LoyaltyToken(w3, operator, address)
    await token.wait_mined(await token.send_set_budget(campaign, 1_000))
    tx_hash = await token.send_issue_batch(campaign, ids, holders, amounts)
    receipt = await token.wait_for_receipt(tx_hash, timeout=30)
    assert receipt is not None and {e.id for e in receipt.events} <= set(ids)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, Hash32, HexStr
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.exceptions import (
    BadResponseFormat,
    BlockNotFound,
    ContractLogicError,
    ProviderConnectionError,
    Web3RPCError,
)
from web3.types import FilterParams, LogReceipt, RPCEndpoint, TxParams, Wei

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.client import EMPTY_CODE_HASH, GAS_HEADROOM_DIVISOR, redact_url
from crm_ledger.errors import ChainError, ChainUnavailable

__all__ = [
    "EMPTY_CODE_HASH",
    "EXPIRER_ROLE",
    "ISSUER_ROLE",
    "REDEEMER_ROLE",
    "TX_GAS_CAP",
    "LoyaltyToken",
    "TokenDeployment",
    "TokenEvent",
    "TokenReceipt",
    "TokenRejected",
]

ISSUER_ROLE = keccak(text="ISSUER_ROLE")
REDEEMER_ROLE = keccak(text="REDEEMER_ROLE")
EXPIRER_ROLE = keccak(text="EXPIRER_ROLE")
#: The per-transaction gas cap (EIP-7825); no transaction the service sends asks for more.
TX_GAS_CAP = 16_777_216
#: Ids per eth_getLogs topic filter when looking events up by id.
_IDS_PER_LOG_QUERY = 100
_LOG_CHUNK_BLOCKS = 10_000

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,
    ProviderConnectionError,
    BadResponseFormat,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


class TokenRejected(ChainError):
    """LoyaltyToken would revert the transaction; `error` is the custom error's name."""

    def __init__(self, message: str, *, error: str, arguments: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.error = error
        self.arguments = arguments


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One Issued, Redeemed or Expired event: which id, whose points (lowercase hex), how many,
    where."""

    kind: str
    id: bytes
    holder: str
    amount: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class TokenReceipt:
    """A mined transaction: status (1 success, 0 reverted), location, gas, token events."""

    tx_hash: bytes
    status: int
    block_number: int
    block_hash: bytes
    gas_used: int
    gas_limit: int
    events: tuple[TokenEvent, ...]


@dataclass(frozen=True, slots=True)
class TokenDeployment:
    """A freshly deployed LoyaltyToken."""

    address: ChecksumAddress
    tx_hash: bytes
    block_number: int
    code_hash: bytes


class LoyaltyToken:
    """LoyaltyToken over JSON-RPC, signing locally with the loyalty operator's key."""

    def __init__(self, w3: AsyncWeb3[Any], signer: LocalAccount, address: str | None) -> None:
        artifact = load_artifact("LoyaltyToken")
        self._w3 = w3
        self._signer = signer
        self._abi = artifact.abi
        self._bytecode = artifact.bytecode
        self.address: ChecksumAddress | None = (
            to_checksum_address(address) if address is not None else None
        )
        self._contract = w3.eth.contract(address=self.address, abi=self._abi)
        self._errors = _error_decoders(self._abi)
        self._functions = _function_encoders(self._abi)
        self._topics = {
            _event_topic(self._abi, name): name for name in ("Issued", "Redeemed", "Expired")
        }
        self._chain_id: int | None = None
        self._address_lower = self.address.lower() if self.address else ""

    def __repr__(self) -> str:
        return f"LoyaltyToken({self.rpc_url}, address={self.address}, operator={self.operator})"

    @property
    def rpc_url(self) -> str:
        """The node's URL, without credentials, path or query."""
        endpoint = getattr(self._w3.provider, "endpoint_uri", None)
        return redact_url(str(endpoint)) if endpoint else type(self._w3.provider).__name__

    @property
    def operator(self) -> ChecksumAddress:
        """The account that signs: token admin, issuer, redeemer and expirer."""
        return self._signer.address

    def at(self, address: str) -> LoyaltyToken:
        """The same node and signer, bound to the LoyaltyToken at `address`."""
        return LoyaltyToken(self._w3, self._signer, address)

    # Chain -------------------------------------------------------------------------------

    async def chain_id(self) -> int:
        """The node's chain id."""
        with self._transport("eth_chainId"):
            return int(await self._w3.eth.chain_id)

    async def genesis_hash(self) -> bytes:
        """Hash of block 0."""
        found = await self.block_hash(0)
        if found is None:
            raise ChainUnavailable(f"the node at {self.rpc_url} has no block 0")
        return found

    async def block_number(self) -> int:
        """Number of the latest block."""
        with self._transport("eth_blockNumber"):
            return int(await self._w3.eth.block_number)

    async def block_hash(self, number: int) -> bytes | None:
        """Hash of block `number`, or None beyond the head."""
        with self._transport("eth_getBlockByNumber"):
            try:
                block = await self._w3.eth.get_block(number)
            except BlockNotFound:
                return None
        return bytes(block["hash"])

    async def code_hash(self, address: str) -> bytes:
        """keccak256 of the code at `address`."""
        with self._transport("eth_getCode"):
            code = await self._w3.eth.get_code(to_checksum_address(address))
        return keccak(bytes(code))

    # Views -------------------------------------------------------------------------------

    async def balance_of(self, holder: str) -> int:
        """Points `holder` holds."""
        return int(await self._view("balanceOf", to_checksum_address(holder)))

    async def campaign_budget(self, campaign: bytes) -> int:
        """The campaign's total budget on chain."""
        return int(await self._view("campaignBudget", campaign))

    async def campaign_remaining(self, campaign: bytes) -> int:
        """Points the campaign may still issue."""
        return int(await self._view("campaignRemaining", campaign))

    async def issued(self, issuance_id: bytes) -> bool:
        """Whether issuance id `issuance_id` is used."""
        return bool(await self._view("issued", issuance_id))

    async def burned(self, burn_id: bytes) -> bool:
        """Whether burn id `burn_id` is used."""
        return bool(await self._view("burned", burn_id))

    async def has_role(self, role: bytes, account: str) -> bool:
        """Whether `account` holds `role`."""
        return bool(await self._view("hasRole", role, to_checksum_address(account)))

    # Transactions ------------------------------------------------------------------------

    async def send_set_budget(self, campaign: bytes, budget: int) -> bytes:
        """`setCampaignBudget(campaign, budget)`; returns the transaction hash."""
        return await self._send("setCampaignBudget", campaign, budget)

    async def send_grant_role(self, role: bytes, account: str) -> bytes:
        """`grantRole(role, account)`; returns the transaction hash."""
        return await self._send("grantRole", role, to_checksum_address(account))

    async def send_issue_batch(
        self,
        campaign: bytes,
        ids: Sequence[bytes],
        holders: Sequence[str],
        amounts: Sequence[int],
    ) -> bytes:
        """`issueBatch(campaign, ids, holders, amounts)`; returns the transaction hash."""
        return await self._send(
            "issueBatch",
            campaign,
            list(ids),
            [to_checksum_address(h) for h in holders],
            list(amounts),
        )

    async def send_redeem(self, burn_id: bytes, holder: str, amount: int, ref: bytes) -> bytes:
        """`redeem(burn_id, holder, amount, ref)`; returns the transaction hash."""
        return await self._send("redeem", burn_id, to_checksum_address(holder), amount, ref)

    async def send_expire_batch(
        self,
        ids: Sequence[bytes],
        holders: Sequence[str],
        amounts: Sequence[int],
        reason: bytes,
    ) -> bytes:
        """`expireBatch(ids, holders, amounts, reason)`; returns the transaction hash."""
        return await self._send(
            "expireBatch",
            list(ids),
            [to_checksum_address(h) for h in holders],
            list(amounts),
            reason,
        )

    async def receipt(self, tx_hash: bytes) -> TokenReceipt | None:
        """The mined transaction `tx_hash` with its token events; None while unknown or gone.

        Read as raw JSON-RPC: web3's receipt formatters take longer than the node for a
        receipt of 550 events.
        """
        raw = await self._raw("eth_getTransactionReceipt", "0x" + tx_hash.hex())
        if raw is None:
            return None
        events = tuple(
            event for log in raw["logs"] if (event := self._decode_raw_log(log)) is not None
        )
        status = int(raw["status"], 16)
        gas_limit = 0
        if status != 1:
            sent = await self._raw("eth_getTransactionByHash", "0x" + tx_hash.hex())
            gas_limit = int(sent["gas"], 16) if sent else 0
        return TokenReceipt(
            tx_hash=_bytes(raw["transactionHash"]),
            status=status,
            block_number=int(raw["blockNumber"], 16),
            block_hash=_bytes(raw["blockHash"]),
            gas_used=int(raw["gasUsed"], 16),
            gas_limit=gas_limit,
            events=events,
        )

    async def _raw(self, method: str, *params: Any) -> Any:
        with self._transport(method):
            answer = await self._w3.provider.make_request(RPCEndpoint(method), list(params))
        if not isinstance(answer, dict) or answer.get("error"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise ChainUnavailable(
                f"the node at {self.rpc_url} answered {method} with an error: "
                f"{self._scrub(str(error))}"
            )
        return answer.get("result")

    async def wait_for_receipt(
        self, tx_hash: bytes, timeout: float, *, poll_seconds: float = 0.02
    ) -> TokenReceipt | None:
        """`receipt(tx_hash)` once mined, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.receipt(tx_hash)
            if found is not None or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(poll_seconds)

    async def wait_mined(self, tx_hash: bytes, timeout: float = 60.0) -> TokenReceipt:
        """The successful receipt of `tx_hash`; `ChainUnavailable` or `ChainError` otherwise."""
        found = await self.wait_for_receipt(tx_hash, timeout)
        if found is None:
            raise ChainUnavailable(
                f"transaction 0x{tx_hash.hex()} was not mined on {self.rpc_url} within "
                f"{timeout:.0f} s"
            )
        if found.status != 1:
            raise ChainError(f"transaction 0x{tx_hash.hex()} reverted on {self.rpc_url}")
        return found

    async def find_events(
        self, kind: str, ids: Sequence[bytes], *, from_block: int
    ) -> list[TokenEvent]:
        """The `kind` events ("Issued", "Redeemed", "Expired") of `ids` since `from_block`."""
        topic = next(t for t, name in self._topics.items() if name == kind)
        # Issued indexes (campaign, id, to); Redeemed and Expired index (id, from).
        id_position = 2 if kind == "Issued" else 1
        last = await self.block_number()
        found: list[TokenEvent] = []
        for start in range(0, len(ids), _IDS_PER_LOG_QUERY):
            chunk = [HexStr("0x" + i.hex()) for i in ids[start : start + _IDS_PER_LOG_QUERY]]
            topics: list[Any] = [HexStr("0x" + topic.hex())]
            topics += [None] * (id_position - 1) + [chunk]
            block = from_block
            while block <= last:
                end = min(block + _LOG_CHUNK_BLOCKS - 1, last)
                query: FilterParams = {
                    "address": self._bound().address,
                    "fromBlock": block,
                    "toBlock": end,
                    "topics": topics,
                }
                with self._transport("eth_getLogs"):
                    logs = await self._w3.eth.get_logs(query)
                found += [e for log in logs if (e := self._decode_log(log)) is not None]
                block = end + 1
        return found

    async def deploy(self, *, name: str, symbol: str, timeout: float = 60.0) -> TokenDeployment:
        """Deploy a LoyaltyToken whose admin is the operator, and wait until it is mined."""
        arguments = abi_encode(["string", "string", "address"], [name, symbol, self.operator])
        data = HexStr("0x" + (self._bytecode + arguments).hex())
        gas = await self._estimate({"data": data})
        tx_hash = await self._sign_and_send({"data": data, "gas": gas})
        mined = await self.wait_mined(tx_hash, timeout)
        with self._transport("eth_getTransactionReceipt"):
            raw = await self._w3.eth.get_transaction_receipt(Hash32(tx_hash))
        address = raw.get("contractAddress")
        if address is None:
            raise ChainError(f"the LoyaltyToken deployment 0x{tx_hash.hex()} made no contract")
        return TokenDeployment(
            address=to_checksum_address(address),
            tx_hash=tx_hash,
            block_number=mined.block_number,
            code_hash=await self.code_hash(address),
        )

    # Internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transport(self, doing: str) -> Iterator[None]:
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
        endpoint = getattr(self._w3.provider, "endpoint_uri", None)
        return text.replace(str(endpoint), self.rpc_url) if endpoint else text

    def _bound(self) -> Any:
        if self.address is None:
            raise ValueError("this LoyaltyToken client has no contract address: use `at(address)`")
        return self._contract

    async def _view(self, name: str, *args: Any) -> Any:
        function = getattr(self._bound().functions, name)
        try:
            with self._transport(f"eth_call {name}"):
                return await function(*args).call()
        except ContractLogicError as exc:
            raise self._rejected(name, exc) from None

    async def _send(self, name: str, *args: Any) -> bytes:
        contract = self._bound()
        # eth_abi directly: web3's encode_abi formats every array element and takes a quarter
        # of a second for a 550-entry issueBatch.
        selector, types = self._functions[name]
        data = HexStr("0x" + (selector + abi_encode(types, list(args))).hex())
        try:
            gas = await self._estimate({"to": contract.address, "data": data})
        except ContractLogicError as exc:
            raise self._rejected(name, exc) from None
        return await self._sign_and_send({"to": contract.address, "data": data, "gas": gas})

    async def _estimate(self, params: TxParams) -> int:
        with self._transport("eth_estimateGas"):
            estimate = int(await self._w3.eth.estimate_gas({**params, "from": self.operator}))
        if estimate > TX_GAS_CAP:
            raise TokenRejected(
                f"the transaction needs {estimate} gas, over the per-transaction cap of "
                f"{TX_GAS_CAP}: send fewer entries at once",
                error="GasCapExceeded",
                arguments=(estimate,),
            )
        return min(estimate + estimate // GAS_HEADROOM_DIVISOR, TX_GAS_CAP)

    async def _sign_and_send(self, params: TxParams) -> bytes:
        with self._transport("preparing a transaction"):
            if self._chain_id is None:
                self._chain_id = int(await self._w3.eth.chain_id)
            nonce = await self._w3.eth.get_transaction_count(self.operator, "pending")
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
            "maxFeePerGas": Wei(2 * base_fee + priority_fee),
        }
        signed = self._signer.sign_transaction(cast(dict[str, Any], transaction))
        with self._transport("eth_sendRawTransaction"):
            await self._w3.eth.send_raw_transaction(signed.raw_transaction)
        return bytes(signed.hash)

    def _rejected(self, doing: str, exc: ContractLogicError) -> TokenRejected:
        data = exc.data.get("data") if isinstance(exc.data, dict) else exc.data
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            raw = bytes.fromhex(data[2:])
            decoder = self._errors.get(raw[:4])
            if decoder is not None:
                name, types = decoder
                with contextlib.suppress(Exception):
                    arguments = tuple(abi_decode(types, raw[4:]))
                    shown = ", ".join(_show(a) for a in arguments)
                    return TokenRejected(
                        f"LoyaltyToken at {self.address} rejects {doing}: {name}({shown})",
                        error=name,
                        arguments=arguments,
                    )
        return TokenRejected(
            f"LoyaltyToken at {self.address} rejects {doing}: {exc.message or 'reverted'}",
            error="Reverted",
        )

    def _decode_log(self, log: LogReceipt) -> TokenEvent | None:
        return self._decode_raw_log(
            {
                "address": str(log["address"]),
                "topics": ["0x" + bytes(t).hex() for t in log["topics"]],
                "data": "0x" + bytes(log["data"]).hex(),
                "transactionHash": "0x" + bytes(log["transactionHash"]).hex(),
                "blockNumber": hex(int(log["blockNumber"])),
                "blockHash": "0x" + bytes(log["blockHash"]).hex(),
            }
        )

    def _decode_raw_log(self, log: dict[str, Any]) -> TokenEvent | None:
        """An event of this token from a JSON-RPC log object; None for any other log."""
        topics = log["topics"]
        if self.address is None or not topics or log["address"].lower() != self._address_lower:
            return None
        kind = self._topics.get(_bytes(topics[0]))
        if kind is None:
            return None
        # Issued indexes (campaign, id, to); Redeemed and Expired index (id, from).
        event_id, holder = (topics[2], topics[3]) if kind == "Issued" else (topics[1], topics[2])
        return TokenEvent(
            kind=kind,
            id=_bytes(event_id),
            holder="0x" + holder[-40:],
            amount=int(log["data"][2:66], 16),
            tx_hash=_bytes(log["transactionHash"]),
            block_number=int(log["blockNumber"], 16),
            block_hash=_bytes(log["blockHash"]),
        )


def _error_decoders(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str]]]:
    decoders: dict[bytes, tuple[str, list[str]]] = {}
    for entry in abi:
        if entry["type"] == "error":
            types = [argument["type"] for argument in entry["inputs"]]
            decoders[keccak(text=f"{entry['name']}({','.join(types)})")[:4]] = (
                entry["name"],
                types,
            )
    return decoders


def _function_encoders(abi: Sequence[dict[str, Any]]) -> dict[str, tuple[bytes, list[str]]]:
    """Function name -> (selector, argument types), for the non-overloaded functions."""
    encoders: dict[str, tuple[bytes, list[str]]] = {}
    for entry in abi:
        if entry["type"] == "function":
            types = [argument["type"] for argument in entry["inputs"]]
            encoders[entry["name"]] = (
                keccak(text=f"{entry['name']}({','.join(types)})")[:4],
                types,
            )
    return encoders


def _event_topic(abi: Sequence[dict[str, Any]], name: str) -> bytes:
    entry = next(item for item in abi if item["type"] == "event" and item["name"] == name)
    return keccak(text=f"{name}({','.join(a['type'] for a in entry['inputs'])})")


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def _show(argument: Any) -> str:
    return "0x" + argument.hex() if isinstance(argument, bytes) else str(argument)
