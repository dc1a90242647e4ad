"""What runs beside the API in one process: the embedded chain node, the anchorer, loyalty,
the indexer.

Exports: `Runtime`.

`Runtime.start()` returns at once; a supervisor task starts Anvil when no RPC URL is set,
connects, checks or makes the AuditLedger deployment, takes the anchorer's singleton lock and
runs the anchorer, with the loyalty issuance worker (`loyalty.service`) and the chain indexer
(`indexer.indexer.indexing_beside`) beside it. An
unreachable chain is retried with back-off (writes keep being accepted); a reset chain or
unusable settings halt anchoring with a message `/readyz` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.deploy import ensure_ledger_deployment
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.chain.signer import load_signer
from crm_ledger.config import Settings
from crm_ledger.crm.reconcile import Reconciler
from crm_ledger.errors import ChainReset, ChainUnavailable, ConfigError
from crm_ledger.indexer.indexer import Indexer, indexing_beside
from crm_ledger.loyalty.service import LoyaltyRuntime
from crm_ledger.workers import Supervisor, background_workers
from crm_ledger.workers.lock import SingletonLock

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Process-wide state shared by the API handlers and the background tasks."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    node: LocalNode | None = None
    anchorer: Anchorer | None = None
    indexer: Indexer | None = None
    loyalty: LoyaltyRuntime = field(init=False)
    supervisor: Supervisor = field(init=False)
    _status: dict[str, Any] = field(default_factory=lambda: {"state": "starting"})
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _lock: SingletonLock | None = None

    def __post_init__(self) -> None:
        self.loyalty = LoyaltyRuntime(settings=self.settings, session_factory=self.session_factory)
        self.supervisor = Supervisor(
            engine=self.engine, max_backoff_seconds=self.settings.anchor_retry_max_seconds
        )
        for worker in background_workers(
            settings=self.settings, session_factory=self.session_factory
        ):
            self.supervisor.add(worker)

    @property
    def chain_status(self) -> dict[str, Any]:
        """Anchoring state for `/readyz`: state, message, chain location, last batch."""
        status = dict(self._status)
        if self.anchorer is not None and status.get("state") not in ("halted", "standby"):
            state = self.anchorer.state
            status.update(
                state=state.state,
                message=state.message,
                last_batch_id=state.last_batch_id,
                rollbacks_detected=state.rollbacks_detected,
            )
        status["loyalty"] = self.loyalty.status
        status["indexer"] = (
            self.indexer.state.to_json() if self.indexer is not None else {"state": "stopped"}
        )
        status["workers"] = self.supervisor.status()
        return status

    @property
    def reconciler(self) -> Reconciler | None:
        """The indexer's reconciler, when this process runs the indexer."""
        return self.indexer.reconciler if self.indexer is not None else None

    async def start(self) -> None:
        """Start the supervisor in the background; returns at once."""
        self._stop.clear()
        self._task = asyncio.create_task(self._supervise(), name="crm-ledger-anchoring")
        await self.supervisor.start()

    async def stop(self) -> None:
        """Stop the anchorer, release its lock, stop the embedded node (its state is saved)."""
        self._stop.set()
        await self.supervisor.stop()
        if self._task is not None:
            await self._task
            self._task = None
        if self._lock is not None:
            await asyncio.to_thread(self._lock.release)
        if self.node is not None:
            await asyncio.to_thread(self.node.stop)
            self.node = None

    async def _supervise(self) -> None:
        try:
            await self._run_anchoring()
        except ConfigError as exc:
            self._halt(str(exc))
        except Exception as exc:  # the API must keep serving whatever happens here
            log.exception("anchoring supervisor failed")
            self._halt(f"anchoring stopped after an unexpected error: {exc}")

    async def _run_anchoring(self) -> None:
        settings = self.settings
        rpc_url = settings.rpc_url
        if rpc_url is None:
            self.node = await asyncio.to_thread(
                start_anvil,
                port=settings.anvil_port,
                state_path=settings.data_dir / "anvil-state.json",
                binary=settings.anvil_bin,
            )
            rpc_url = self.node.rpc_url
        self._lock = SingletonLock(self.engine)
        delay = 0.2
        while not self._stop.is_set():
            if not await asyncio.to_thread(self._lock.try_acquire):
                self._status = {
                    "state": "standby",
                    "message": "another process holds the anchorer lock; this one stands by",
                }
                await self._sleep(1.0)
                continue
            w3 = make_async_web3(rpc_url, settings.rpc_timeout_seconds)
            try:
                chain_id = await self._chain_id(w3)
                signer = load_signer(settings, chain_id=chain_id)
                chain = LedgerChain(w3, signer, None)
                deployment = await ensure_ledger_deployment(
                    session_factory=self.session_factory, chain=chain
                )
                self._status = {
                    "state": "running",
                    "chain_id": deployment.chain_id,
                    "contract": deployment.address,
                    "epoch": deployment.epoch,
                }
                self.anchorer = Anchorer(
                    session_factory=self.session_factory,
                    chain=chain.at(deployment.address),
                    deployment=DeploymentRef(
                        epoch=deployment.epoch,
                        address=deployment.address,
                        code_hash=deployment.code_hash,
                        block_number=deployment.block_number,
                    ),
                    settings=settings,
                )
                async with (
                    self.loyalty.beside(w3=w3, chain_id=chain_id, anchorer=signer.address),
                    indexing_beside(
                        w3=w3, session_factory=self.session_factory, settings=settings
                    ) as self.indexer,
                ):
                    await self.anchorer.run(self._stop)
                if self.anchorer.state.state == "halted":
                    self._halt(self.anchorer.state.message)
                    return
            except ChainUnavailable as exc:
                self._status = {"state": "chain_unavailable", "message": str(exc)}
                log.warning("chain unavailable, retrying in %.1f s: %s", delay, exc)
                await self._sleep(delay)
                delay = min(delay * 2, settings.anchor_retry_max_seconds)
            except ChainReset as exc:
                self._halt(str(exc))
                return
            finally:
                with contextlib.suppress(Exception):
                    await w3.provider.disconnect()

    async def _chain_id(self, w3: Any) -> int:
        try:
            return int(await w3.eth.chain_id)
        except Exception as exc:
            raise ChainUnavailable(f"cannot reach the chain node: {exc}") from exc

    def _halt(self, message: str) -> None:
        log.error("anchoring halted: %s", message)
        self._status = {"state": "halted", "message": message}

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
