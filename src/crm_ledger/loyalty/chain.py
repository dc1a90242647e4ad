"""The async LoyaltyToken client: reads, signed transactions, receipts with decoded events.

Exports: `LoyaltyToken`, `TokenReceipt`, `TokenEvent`, `TokenDeployment`, `TokenRejected`,
`ISSUER_ROLE`, `REDEEMER_ROLE`, `EXPIRER_ROLE`, `TX_GAS_CAP`.

Errors follow `crm_ledger.chain.contract.ContractClient`, whose transport, views and signing
the client shares with the AuditLedger's: transport failures and node errors become
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_typing import ABIFunction, ChecksumAddress, Hash32, HexStr
from eth_utils.abi import function_abi_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError
from web3.types import FilterParams, LogReceipt

from crm_ledger.chain.contract import (
    EMPTY_CODE_HASH,
    GAS_HEADROOM_DIVISOR,
    ContractClient,
    poll_until_found,
    show_arguments,
)
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


class LoyaltyToken(ContractClient):
    """LoyaltyToken over JSON-RPC, signing locally with the loyalty operator's key.

    Chain facts (`chain_id`, `block_hash`, `code_hash`, ...) come from `ContractClient`.
    """

    contract_name = "LoyaltyToken"

    def __init__(self, w3: AsyncWeb3[Any], signer: LocalAccount, address: str | None) -> None:
        super().__init__(w3, signer, address)
        self._functions = _function_encoders(self._abi)
        self._topics = {self._topic(name): name for name in ("Issued", "Redeemed", "Expired")}
        self._address_lower = self.address.lower() if self.address else ""

    def __repr__(self) -> str:
        return f"LoyaltyToken({self.rpc_url}, address={self.address}, operator={self.operator})"

    @property
    def operator(self) -> ChecksumAddress:
        """The account that signs: token admin, issuer, redeemer and expirer."""
        return self.signer_address

    def at(self, address: str) -> LoyaltyToken:
        """The same node and signer, bound to the LoyaltyToken at `address`."""
        return LoyaltyToken(self._w3, self._signer, address)

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
        raw = await self._node.request("eth_getTransactionReceipt", ["0x" + tx_hash.hex()])
        if raw is None:
            return None
        events = tuple(
            event for log in raw["logs"] if (event := self._decode_raw_log(log)) is not None
        )
        status = int(raw["status"], 16)
        gas_limit = 0
        if status != 1:
            sent = await self._node.request("eth_getTransactionByHash", ["0x" + tx_hash.hex()])
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

    async def wait_for_receipt(
        self, tx_hash: bytes, timeout: float, *, poll_seconds: float = 0.02
    ) -> TokenReceipt | None:
        """`receipt(tx_hash)` once mined, or None after `timeout` seconds."""
        return await poll_until_found(lambda: self.receipt(tx_hash), timeout, poll_seconds)

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
                    "address": self._bound_contract().address,
                    "fromBlock": block,
                    "toBlock": end,
                    "topics": topics,
                }
                with self._node.transport("eth_getLogs"):
                    logs = await self._w3.eth.get_logs(query)
                found += [e for log in logs if (e := self._decode_log(log)) is not None]
                block = end + 1
        return found

    async def deploy(self, *, name: str, symbol: str, timeout: float = 60.0) -> TokenDeployment:
        """Deploy a LoyaltyToken whose admin is the operator, and wait until it is mined."""
        tx_hash = await self._send_deployment(
            ["string", "string", "address"], [name, symbol, self.operator]
        )
        mined = await self.wait_mined(tx_hash, timeout)
        with self._node.transport("eth_getTransactionReceipt"):
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

    async def _view(self, name: str, *args: Any) -> Any:
        """`ContractClient._view`, with a revert raised as `TokenRejected`."""
        try:
            return await super()._view(name, *args)
        except ContractLogicError as exc:
            raise self._rejected(name, exc) from None

    async def _send(self, name: str, *args: Any) -> bytes:
        contract = self._bound_contract()
        # eth_abi directly: web3's encode_abi formats every array element and takes a quarter
        # of a second for a 550-entry issueBatch.
        selector, types = self._functions[name]
        data = HexStr("0x" + (selector + abi_encode(types, list(args))).hex())
        try:
            gas = await self._estimate_gas({"to": contract.address, "data": data})
        except ContractLogicError as exc:
            raise self._rejected(name, exc) from None
        return await self._sign_and_send({"to": contract.address, "data": data, "gas": gas})

    def _gas_limit(self, estimate: int) -> int:
        """The estimate with headroom, never over `TX_GAS_CAP`; `TokenRejected` over it."""
        if estimate > TX_GAS_CAP:
            raise TokenRejected(
                f"the transaction needs {estimate} gas, over the per-transaction cap of "
                f"{TX_GAS_CAP}: send fewer entries at once",
                error="GasCapExceeded",
                arguments=(estimate,),
            )
        return min(estimate + estimate // GAS_HEADROOM_DIVISOR, TX_GAS_CAP)

    def _rejected(self, doing: str, exc: ContractLogicError) -> TokenRejected:
        decoded = self._decode_revert(exc)
        if decoded is None:
            return TokenRejected(
                f"LoyaltyToken at {self.address} rejects {doing}: {exc.message or 'reverted'}",
                error="Reverted",
            )
        name, arguments = decoded
        return TokenRejected(
            f"LoyaltyToken at {self.address} rejects {doing}: {name}({show_arguments(arguments)})",
            error=name,
            arguments=arguments,
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


def _function_encoders(abi: Sequence[dict[str, Any]]) -> dict[str, tuple[bytes, list[str]]]:
    """Function name -> (selector, argument types), for the non-overloaded functions."""
    encoders: dict[str, tuple[bytes, list[str]]] = {}
    for entry in abi:
        if entry["type"] == "function":
            types = [argument["type"] for argument in entry["inputs"]]
            encoders[entry["name"]] = (
                function_abi_to_4byte_selector(cast(ABIFunction, entry)),
                types,
            )
    return encoders


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:])
