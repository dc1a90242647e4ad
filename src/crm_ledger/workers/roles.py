"""Which background workers a process runs, besides the chain's (anchorer, indexer, loyalty).

Exports: `ROLES`, `WorkerFactory`, `background_workers`.

Each integration adds one factory to `ROLES` under its worker's name: it returns the worker,
or None when the settings do not enable it. `crm-ledger serve` runs every enabled worker under
its supervisor; `crm-ledger worker NAME` runs one alone. Every worker is a singleton per
journal (see `workers.supervisor`). A factory imports its worker's module inside its body, so
the workers' own modules may import `crm_ledger.workers`.

Adding one::

    def _relay(*, settings, session_factory):
        if settings.nats_url is None:
            return None
        from crm_ledger.outbound.relay import NatsRelay
        return NatsRelay(settings=settings, session_factory=session_factory)

    ROLES["nats-relay"] = _relay
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.workers.base import Worker


class WorkerFactory(Protocol):
    """Makes a worker from the settings, or None when they do not enable it."""

    def __call__(
        self, *, settings: Settings, session_factory: sessionmaker[Session]
    ) -> Worker | None: ...


#: Worker name -> factory, in the order the workers start.
ROLES: dict[str, WorkerFactory] = {}


def background_workers(
    *, settings: Settings, session_factory: sessionmaker[Session], only: str | None = None
) -> list[Worker]:
    """The workers the settings enable (only the one named `only`, when given)."""
    workers: list[Worker] = []
    for name, factory in ROLES.items():
        if only is not None and name != only:
            continue
        worker = factory(settings=settings, session_factory=session_factory)
        if worker is not None:
            workers.append(worker)
    return workers


# Commerce ingest (issue 11): maps stored shop webhooks to records. ---------------------------


def _ingest(*, settings: Settings, session_factory: sessionmaker[Session]) -> Worker | None:
    if not settings.run_ingest:
        return None
    from crm_ledger.ingest.worker import IngestWorker

    return IngestWorker(settings=settings, session_factory=session_factory)


ROLES["ingest"] = _ingest
