"""The anchorer as a supervised worker: connect, check or make the deployment, then step.

Exports: `AnchoringWorker`, `ANCHORER`.

`prepare()` opens the process's chain connection, loads the anchorer's key for that chain id,
and checks (or makes, on a new journal) the AuditLedger deployment; `step()` is
`Anchorer.step()`. Back-off on an unreachable chain, standby while another process anchors and
the halt on a reset chain are the supervisor's (`workers.supervisor`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.chain.client import LedgerChain
from crm_ledger.chain.connection import ChainConnection
from crm_ledger.chain.deploy import ensure_ledger_deployment
from crm_ledger.chain.signer import load_signer
from crm_ledger.config import Settings
from crm_ledger.workers.lock import ANCHORER


class AnchoringWorker:
    """Cuts and anchors batches on the process's chain; see the module docstring."""

    name = ANCHORER

    def __init__(
        self,
        *,
        connection: ChainConnection,
        session_factory: sessionmaker[Session],
        settings: Settings,
    ) -> None:
        self._connection = connection
        self._session_factory = session_factory
        self._settings = settings
        self.anchorer: Anchorer | None = None
        self._location: dict[str, Any] = {}

    async def prepare(self) -> None:
        """Connect and check (or make) the AuditLedger deployment."""
        link = await self._connection.open()
        signer = load_signer(self._settings, chain_id=link.chain_id)
        unbound = LedgerChain(link.w3, signer, None)
        deployment = await ensure_ledger_deployment(
            session_factory=self._session_factory, chain=unbound
        )
        self._location = {
            "chain_id": deployment.chain_id,
            "contract": deployment.address,
            "epoch": deployment.epoch,
        }
        self.anchorer = Anchorer(
            session_factory=self._session_factory,
            chain=unbound.at(deployment.address),
            deployment=DeploymentRef(
                epoch=deployment.epoch,
                address=deployment.address,
                code_hash=deployment.code_hash,
                block_number=deployment.block_number,
            ),
            settings=self._settings,
        )

    async def step(self) -> int:
        """One anchoring round; the number of batches anchored."""
        assert self.anchorer is not None, "prepare() first"
        return await self.anchorer.step()

    async def close(self) -> None:
        """Nothing to release: the chain connection is the process's."""

    def report(self) -> dict[str, Any]:
        """Chain location, last batch, rollbacks seen."""
        if self.anchorer is None:
            return {}
        stats = self.anchorer.stats
        return {
            **self._location,
            "last_batch_id": stats.last_batch_id,
            "rollbacks_detected": stats.rollbacks_detected,
        }
