"""The indexer as a supervised worker: connect, then step; housekeeping when caught up.

Exports: `IndexingWorker`, `INDEXER`.

`prepare()` opens the process's chain connection and builds the indexer and its reconciler;
`step()` is `Indexer.step()`, followed, when there was nothing to index, by its housekeeping
(due or requested reconciliations, feed pruning). A chain error that is not mere
unavailability (a reset, a node answering with logs of blocks that are not on its chain) halts
the indexer, by the supervisor: following such a node could corrupt the view.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.chain.connection import ChainConnection
from crm_ledger.config import Settings
from crm_ledger.indexer.indexer import Indexer, make_indexer
from crm_ledger.indexer.reconcile import Reconciler
from crm_ledger.workers.lock import INDEXER


class IndexingWorker:
    """Follows the chain into the CRM view; see the module docstring."""

    name = INDEXER

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
        self.indexer: Indexer | None = None

    @property
    def reconciler(self) -> Reconciler | None:
        """The indexer's reconciler, once connected."""
        return self.indexer.reconciler if self.indexer is not None else None

    async def prepare(self) -> None:
        """Connect and build the indexer."""
        link = await self._connection.open()
        self.indexer = make_indexer(
            w3=link.w3, session_factory=self._session_factory, settings=self._settings
        )

    async def step(self) -> int:
        """One indexing round: 1 if it changed the view (or must look again at once), else 0."""
        assert self.indexer is not None, "prepare() first"
        changed = await self.indexer.step()
        if not changed and self.indexer.stats.waiting_for is None:
            await self.indexer.housekeeping()
        return int(changed)

    async def close(self) -> None:
        """Nothing to release: the chain connection is the process's."""

    def report(self) -> dict[str, Any]:
        """Head, cursor, lag, reorgs and events indexed."""
        return self.indexer.stats.to_json() if self.indexer is not None else {}
