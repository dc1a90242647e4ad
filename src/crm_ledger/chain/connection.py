"""The chain node a process works with, shared by its chain workers (anchorer, indexer, loyalty).

Exports: `ChainConnection`, `ChainLink`.

`open()` is idempotent and cheap once connected: the first call starts the embedded Anvil (when
no RPC URL is set and the process may start one), makes the keep-alive web3 client and reads the
chain id. Every chain worker calls it from its `prepare()`, so whichever starts first connects,
and a node that is down is the supervisor's to back off (`ChainUnavailable`). `close()` at
shutdown disconnects and stops the embedded node (its state is saved).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from crm_ledger.chain.client import make_async_web3
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.config import Settings
from crm_ledger.errors import ChainUnavailable


@dataclass(frozen=True)
class ChainLink:
    """A connected node: its web3 client, its chain id and its URL."""

    w3: Any
    chain_id: int
    rpc_url: str


class ChainConnection:
    """One node for the process; see the module docstring."""

    def __init__(self, settings: Settings, *, may_start_node: bool = True) -> None:
        """`may_start_node=False`: with no RPC URL set, use the Anvil that a `crm-ledger serve`
        on the same data directory started (127.0.0.1:anvil_port) instead of starting one."""
        self._settings = settings
        self._may_start_node = may_start_node
        self._lock = asyncio.Lock()
        self._link: ChainLink | None = None
        self._w3: Any = None
        self.node: LocalNode | None = None

    @property
    def rpc_url(self) -> str | None:
        """The node's URL when known: the configured one, or the embedded Anvil's once it runs
        (or the one a `serve` starts, for a process that may not start its own)."""
        if self._settings.rpc_url is not None:
            return self._settings.rpc_url
        if self.node is not None:
            return self.node.rpc_url
        return None if self._may_start_node else self.embedded_url

    @property
    def embedded_url(self) -> str:
        """Where the embedded Anvil answers: 127.0.0.1 on the `anvil_port` setting."""
        return f"http://127.0.0.1:{self._settings.anvil_port}"

    async def open(self) -> ChainLink:
        """Connect (once); raises `ChainUnavailable` while the node cannot be reached."""
        async with self._lock:
            if self._link is not None:
                return self._link
            rpc_url = await self._node_url()
            if self._w3 is None:
                self._w3 = make_async_web3(rpc_url, self._settings.rpc_timeout_seconds)
            try:
                chain_id = int(await self._w3.eth.chain_id)
            except Exception as exc:
                raise ChainUnavailable(f"cannot reach the chain node: {exc}") from None
            self._link = ChainLink(w3=self._w3, chain_id=chain_id, rpc_url=rpc_url)
            return self._link

    async def close(self) -> None:
        """Disconnect, and stop the embedded node if this process started it."""
        async with self._lock:
            if self._w3 is not None:
                with contextlib.suppress(Exception):
                    await self._w3.provider.disconnect()
            self._w3, self._link = None, None
            if self.node is not None:
                await asyncio.to_thread(self.node.stop)
                self.node = None

    async def _node_url(self) -> str:
        settings = self._settings
        if settings.rpc_url is not None:
            return settings.rpc_url
        if not self._may_start_node:
            return self.embedded_url
        if self.node is None:
            self.node = await asyncio.to_thread(
                start_anvil,
                port=settings.anvil_port,
                state_path=settings.data_dir / "anvil-state.json",
                binary=settings.anvil_bin,
            )
        return self.node.rpc_url
