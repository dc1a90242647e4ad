"""Loyalty in the running service: the worker beside the anchorer, and what handlers read.

Exports: `LoyaltyRuntime`, `TokenReader`.

`Runtime` owns one `LoyaltyRuntime`. While the anchorer runs (in the process holding the
anchorer's singleton lock), `loyalty.beside(...)` runs the issuance worker next to it: it loads
the wallet seed and the operator key, deploys or checks the LoyaltyToken, and runs the worker
with the anchorer's discipline: an unreachable chain is retried with back-off, a reset chain or
unusable settings halt loyalty with a message `/readyz` shows. Handlers read the chain through
`token_reader()` (None while the worker is not connected) and wake the worker with `nudge()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.errors import ChainReset, ChainUnavailable, ConfigError
from crm_ledger.loyalty.chain import LoyaltyToken
from crm_ledger.loyalty.deploy import ensure_token_deployment
from crm_ledger.loyalty.wallets import WalletKeyring, load_operator, load_wallet_keyring
from crm_ledger.loyalty.worker import IssuanceWorker, TokenDeploymentRef

log = logging.getLogger(__name__)


class TokenReader(Protocol):
    """The chain reads handlers make; `LoyaltyToken` is the real one."""

    address: Any

    async def balance_of(self, holder: str) -> int: ...
    async def campaign_remaining(self, campaign: bytes) -> int: ...


@dataclass
class LoyaltyRuntime:
    """The loyalty worker's lifecycle and state, shared with the API handlers."""

    settings: Settings
    session_factory: sessionmaker[Session]
    token: LoyaltyToken | None = None
    chain_id: int | None = None
    keyring: WalletKeyring | None = None
    worker: IssuanceWorker | None = None
    _status: dict[str, Any] = field(default_factory=lambda: {"state": "stopped"})
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def status(self) -> dict[str, Any]:
        """state, message, token address, ops confirmed, rollbacks detected."""
        status = dict(self._status)
        if self.worker is not None and status.get("state") == "running":
            state = self.worker.state
            status.update(
                state=state.state,
                message=state.message,
                ops_confirmed=state.ops_confirmed,
                rollbacks_detected=state.rollbacks_detected,
            )
        return status

    def token_reader(self) -> TokenReader | None:
        """The connected token, or None while the worker is not running."""
        return self.token

    def nudge(self) -> None:
        """Wake the worker now (from any thread): something new is planned."""
        worker, loop = self.worker, self._loop
        if worker is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(worker.wake.set)

    @contextlib.asynccontextmanager
    async def beside(self, *, w3: Any, chain_id: int, anchorer: str) -> AsyncIterator[None]:
        """Run the worker on `w3` for as long as the block runs (nothing if run_loyalty is off)."""
        if not self.settings.run_loyalty:
            yield
            return
        stop = asyncio.Event()
        task = asyncio.create_task(
            self._run(w3=w3, chain_id=chain_id, anchorer=anchorer, stop=stop),
            name="crm-ledger-loyalty",
        )
        try:
            yield
        finally:
            stop.set()
            await task

    async def _run(self, *, w3: Any, chain_id: int, anchorer: str, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        delay = 0.2
        try:
            while not stop.is_set():
                try:
                    await self._connect_and_work(w3, chain_id, anchorer, stop)
                    return
                except ChainUnavailable as exc:
                    self._status = {"state": "chain_unavailable", "message": str(exc)}
                    log.warning("loyalty: chain unavailable, retrying in %.1f s: %s", delay, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    delay = min(delay * 2, self.settings.anchor_retry_max_seconds)
        except (ConfigError, ChainReset) as exc:
            self._halt(str(exc))
        except Exception as exc:  # the anchorer and the API must keep going whatever happens
            log.exception("loyalty worker failed")
            self._halt(f"loyalty stopped after an unexpected error: {exc}")
        finally:
            self.token = None
            if self._status.get("state") not in ("halted",):
                self._status = {"state": "stopped"}

    async def _connect_and_work(
        self, w3: Any, chain_id: int, anchorer: str, stop: asyncio.Event
    ) -> None:
        keyring = load_wallet_keyring(self.settings, chain_id=chain_id)
        operator = load_operator(self.settings, chain_id=chain_id, anchorer=anchorer)
        unbound = LoyaltyToken(w3, operator, None)
        deployment = await ensure_token_deployment(
            session_factory=self.session_factory, token=unbound, settings=self.settings
        )
        self.keyring, self.chain_id = keyring, chain_id
        self.token = unbound.at(deployment.address)
        self.worker = IssuanceWorker(
            session_factory=self.session_factory,
            token=self.token,
            deployment=TokenDeploymentRef(
                address=deployment.address,
                code_hash=deployment.code_hash,
                block_number=deployment.block_number,
            ),
            keyring=keyring,
            settings=self.settings,
        )
        self._status = {
            "state": "running",
            "token": deployment.address,
            "operator": operator.address,
        }
        await self.worker.run(stop)
        if self.worker.state.state == "halted":
            self._halt(self.worker.state.message)

    def _halt(self, message: str) -> None:
        log.error("loyalty halted: %s", message)
        self._status = {"state": "halted", "message": message}
