"""The service's read-only AuditLedger access for audits (web3, over JSON-RPC).

Exports: `ChainProvider`, `RpcChainProvider`, `read_only_chain`, `connect_read_only`,
`default_rpc_url`. The protocol audits read through (`AuditChain`, `ChainFor`) is the
verifier's: `verifier.chain`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.config import Settings
from crm_ledger.verifier.chain import ChainFor


class ChainProvider(Protocol):
    """Opens access to the chain for one audit (an HTTP connection, or a fake in tests)."""

    def connect(self) -> AbstractAsyncContextManager[ChainFor]: ...


@dataclass(frozen=True, slots=True)
class RpcChainProvider:
    """`ChainProvider` over JSON-RPC: one connection per `connect()`, read-only clients."""

    rpc_url: str
    timeout: float

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[ChainFor]:
        """Chains bound to any address, sharing one connection closed on exit."""
        w3 = make_async_web3(self.rpc_url, self.timeout)
        try:
            yield lambda address: read_only_chain(w3, address)
        finally:
            await w3.provider.disconnect()


def read_only_chain(w3: AsyncWeb3[Any], address: str) -> LedgerChain:
    """A `LedgerChain` bound to the AuditLedger at `address` that can only read.

    `LedgerChain` wants a signer; an auditor has no key, so it gets a fresh random account that
    holds nothing and is never used to sign.
    """
    nobody: LocalAccount = Account.create()
    return LedgerChain(w3, nobody, address)


@asynccontextmanager
async def connect_read_only(
    rpc_url: str, address: str, *, timeout: float
) -> AsyncIterator[LedgerChain]:
    """`read_only_chain` over its own HTTP connection, closed on exit."""
    w3 = make_async_web3(rpc_url, timeout)
    try:
        yield read_only_chain(w3, address)
    finally:
        await w3.provider.disconnect()


def default_rpc_url(settings: Settings) -> str:
    """The node the service anchors to: `CRM_LEDGER_RPC_URL`, else its own Anvil's port."""
    return settings.rpc_url or f"http://127.0.0.1:{settings.anvil_port}"
