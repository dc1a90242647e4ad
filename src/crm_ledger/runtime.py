"""What runs beside the API in one process: the chain connection and the background workers.

Exports: `Runtime`, `PERSONAL_DATA_COPIES`, `CHAIN_WORKERS`.

Every background role is a peer under one supervisor (`workers.Supervisor`): the anchorer, the
indexer and loyalty issuance share the process's chain connection (`chain.connection`: the
embedded Anvil when no RPC URL is set), and the integrations' workers (`crm_ledger.roles`) run
beside them. Each is a singleton per journal and keeps its own state: an anchorer backing off
on an unreachable chain, or halted on a reset one, leaves the indexer and loyalty to go on as
far as they can. `/readyz` shows the `chain` section (the anchorer's state, location and last
batch, with `indexer` and `loyalty` inside it) and `workers` (every other worker).

A runtime also attaches to its engine the erasers of every package above the journal that keeps
a copy of personal data (`PERSONAL_DATA_COPIES`, see `journal.erasure`): the API, the workers
and the CLI all build one, so every erasure in the process reaches every copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring.worker import AnchoringWorker
from crm_ledger.chain.connection import ChainConnection
from crm_ledger.config import Settings
from crm_ledger.indexer.reconcile import Reconciler
from crm_ledger.indexer.worker import IndexingWorker
from crm_ledger.ingest.erasure import erase_ingest_copies
from crm_ledger.journal.erasure import CopyEraser, attach_copy_erasers
from crm_ledger.loyalty.service import LOYALTY, LoyaltyRuntime
from crm_ledger.roles import background_workers
from crm_ledger.workers import Supervisor, WorkerState
from crm_ledger.workers.board import PUBLISH_SECONDS, StatusBoard, merge
from crm_ledger.workers.lock import ANCHORER, INDEXER

#: The erasers of the packages above the journal that keep a copy of a customer's personal
#: data, in the order an erasure runs them (`journal.erasure`). A package that starts keeping
#: one adds its eraser here; `tests/test_runtime.py` checks that every `*/erasure.py` is listed.
PERSONAL_DATA_COPIES: tuple[CopyEraser, ...] = (erase_ingest_copies,)
#: `only=CHAIN_WORKERS`: the three chain workers together, sharing one chain connection
#: (`crm-ledger worker chain`, the child process `serve` runs them in).
CHAIN_WORKERS = "chain"


@dataclass
class Runtime:
    """Process-wide state shared by the API handlers and the background workers.

    `only` runs a single worker (`crm-ledger worker NAME`), or the anchorer, the indexer and
    loyalty issuance together (`CHAIN_WORKERS`); by default every enabled one runs.
    """

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    only: str | None = None
    connection: ChainConnection = field(init=False)
    supervisor: Supervisor = field(init=False)
    loyalty: LoyaltyRuntime = field(init=False)
    anchoring: AnchoringWorker | None = field(init=False, default=None)
    indexing: IndexingWorker | None = field(init=False, default=None)
    #: Where `serve`'s processes publish their workers' states (`None` outside `serve`).
    board: StatusBoard | None = field(init=False, default=None)
    _publishing: asyncio.Task[None] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        settings, factory = self.settings, self.session_factory
        attach_copy_erasers(self.engine, PERSONAL_DATA_COPIES)
        self.board = StatusBoard.from_environment()
        # A worker run alone other than the anchorer (or the chain workers) follows the node a
        # `serve` started.
        self.connection = ChainConnection(
            settings, may_start_node=self.only in (None, ANCHORER, CHAIN_WORKERS)
        )
        self.supervisor = Supervisor(
            engine=self.engine,
            idle_seconds=settings.anchor_poll_seconds,
            max_backoff_seconds=settings.anchor_retry_max_seconds,
        )
        self.loyalty = LoyaltyRuntime(
            settings=settings,
            session_factory=factory,
            connection=self.connection,
            wake=lambda: self.supervisor.wake(LOYALTY),
        )
        if self._runs(ANCHORER) and (settings.run_anchorer or self.only == ANCHORER):
            self.anchoring = AnchoringWorker(
                connection=self.connection, session_factory=factory, settings=settings
            )
            self.supervisor.add(self.anchoring, idle_seconds=settings.anchor_poll_seconds)
        if self._runs(INDEXER) and (settings.run_indexer or self.only == INDEXER):
            self.indexing = IndexingWorker(
                connection=self.connection, session_factory=factory, settings=settings
            )
            self.supervisor.add(
                self.indexing,
                idle_seconds=settings.indexer_poll_seconds,
                max_backoff_seconds=settings.indexer_retry_max_seconds,
            )
        if self._runs(LOYALTY) and (settings.run_loyalty or self.only == LOYALTY):
            self.supervisor.add(self.loyalty, idle_seconds=settings.loyalty_poll_seconds)
        for worker in background_workers(
            settings=settings, session_factory=factory, only=self.only
        ):
            self.supervisor.add(worker)

    def _runs(self, name: str) -> bool:
        """Whether this process may run `name` (the `run_*` settings then say whether it does;
        a worker named alone runs whatever they say)."""
        if self.only == CHAIN_WORKERS:
            return name in (ANCHORER, INDEXER, LOYALTY)
        return self.only is None or self.only == name

    @property
    def chain_status(self) -> dict[str, Any]:
        """`/readyz`'s chain section: the anchorer's state and location, the indexer's and
        loyalty's states inside it, and every other worker under `workers`; under `serve`, of
        every process it started (`workers.board`)."""
        workers = self.supervisor.status()
        if self.board is not None:
            workers = merge([(self.board.pid, workers), *self.board.others()])
        stopped = {"state": WorkerState.STOPPED.value, "message": ""}
        status = dict(workers.pop(ANCHORER, stopped))
        status["indexer"] = workers.pop(INDEXER, stopped)
        status["loyalty"] = workers.pop(LOYALTY, stopped)
        status["workers"] = workers
        return status

    @property
    def reconciler(self) -> Reconciler | None:
        """The indexer's reconciler, when this process runs the indexer."""
        return self.indexing.reconciler if self.indexing is not None else None

    async def start(self) -> None:
        """Start every worker (and publishing their states, under `serve`); returns at once."""
        await self.supervisor.start()
        if self.board is not None:
            self._publishing = asyncio.create_task(self._publish(self.board))

    async def _publish(self, board: StatusBoard) -> None:
        while True:
            board.publish(self.supervisor.status())
            await asyncio.sleep(PUBLISH_SECONDS)

    async def wait(self) -> None:
        """Until every worker has stopped or halted."""
        await self.supervisor.wait()

    async def stop(self) -> None:
        """Stop the workers, release their locks, stop the embedded node (its state is saved)."""
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
            self._publishing = None
        await self.supervisor.stop()
        if self.board is not None:
            self.board.withdraw()
        await self.connection.close()
