"""A record's receipt as the client holds it, and its independent verification.

Exports: `Receipt`.

`Receipt.verify(rpc_url=...)` trusts nothing the service says: it runs the project's verifier
(`crm_ledger.verifier.record`) over the receipt, the content you hold and the chain's JSON-RPC
(`crm_ledger.verifier.rpc`, httpx + eth_abi), and returns every step's result.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from crm_ledger.ledger.receipts import Receipt as ParsedReceipt
from crm_ledger.verifier import rpc
from crm_ledger.verifier.record import RecordCheck, parse_content, parse_key, verify_record


@dataclass(frozen=True, slots=True)
class Receipt:
    """A "crm-ledger/receipt/v1" receipt: `data` is the JSON the service served."""

    data: dict[str, Any]

    @property
    def record_id(self) -> str:
        """The record the receipt proves."""
        return str(self.data["record_id"])

    @property
    def batch_id(self) -> int:
        """The batch the record was anchored in."""
        return int(self.data["batch"]["id"])

    @property
    def contract(self) -> str:
        """The AuditLedger contract the receipt names."""
        return str(self.data["chain"]["contract"])

    @property
    def tx_hash(self) -> str:
        """The anchoring transaction."""
        return str(self.data["chain"]["tx_hash"])

    async def averify(
        self,
        *,
        rpc_url: str,
        content: str | dict[str, Any] | None = None,
        customer_key: str | None = None,
        contract: str | None = None,
        timeout: float = 10.0,
    ) -> RecordCheck:
        """`verify` for async code."""
        parsed = ParsedReceipt.from_json(self.data)
        address = contract or parsed.chain.contract
        async with rpc.connect(rpc_url, address, timeout=timeout) as chain:
            return await verify_record(
                receipt=parsed,
                content=parse_content(content),
                key=parse_key(customer_key),
                chain=chain,
                expected_contract=contract,
                unchecked_content="no content and customer key were given"
                if content is None or customer_key is None
                else "",
            )

    def verify(
        self,
        *,
        rpc_url: str,
        content: str | dict[str, Any] | None = None,
        customer_key: str | None = None,
        contract: str | None = None,
        timeout: float = 10.0,
    ) -> RecordCheck:
        """Check the receipt against the chain at `rpc_url` alone; every step's result.

        `content` is the record's `document` (its canonical text); with `customer_key` (the
        customer's 32-byte key as 0x-hex, e.g. from an export bundle) the commitment is
        checked too. Pin `contract` to the AuditLedger address you trust; without it the
        receipt's own is used. `check.verdict` is "valid", "invalid" or "incomplete" (the
        chain could not be asked). Not from inside a running event loop: use `averify`.
        """
        return asyncio.run(
            self.averify(
                rpc_url=rpc_url,
                content=content,
                customer_key=customer_key,
                contract=contract,
                timeout=timeout,
            )
        )
