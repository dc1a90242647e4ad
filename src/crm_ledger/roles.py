"""Which background workers a process runs, besides the chain's (anchorer, indexer, loyalty).

Exports: `ROLES`, `WorkerFactory`, `background_workers`.

Each integration adds one factory to `ROLES` under its worker's name: it returns the worker,
or None when the settings do not enable it. `crm-ledger serve` runs every enabled worker under
its supervisor; `crm-ledger worker NAME` runs one alone. Every worker is a singleton per
journal (see `workers.supervisor`). This module sits above the packages whose workers it
names (it is part of how a process is put together, with `runtime`), so `workers` imports none
of them and they may import `crm_ledger.workers`.

Adding one::

    def _relay(*, settings, session_factory, alone):
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
    """Makes a worker from the settings, or None when they do not enable it. `alone` is True
    for `crm-ledger worker NAME`: a worker that runs inside `serve` by default, with a setting
    to switch it off there (`CRM_LEDGER_RUN_INGEST`), runs alone whatever that setting says."""

    def __call__(
        self, *, settings: Settings, session_factory: sessionmaker[Session], alone: bool
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
        worker = factory(settings=settings, session_factory=session_factory, alone=only == name)
        if worker is not None:
            workers.append(worker)
    return workers


# Commerce ingest (issue 11): maps stored shop webhooks to records. ---------------------------


def _ingest(
    *, settings: Settings, session_factory: sessionmaker[Session], alone: bool
) -> Worker | None:
    # CRM_LEDGER_RUN_INGEST=false takes the mapper out of `serve`, for `crm-ledger worker
    # ingest` to run it as a process of its own (docs/deployment.md).
    if not (settings.run_ingest or alone):
        return None
    from crm_ledger.ingest.worker import IngestWorker

    return IngestWorker(settings=settings, session_factory=session_factory)


ROLES["ingest"] = _ingest
# Salesforce sync (issue 12) -------------------------------------------------------------------


def _salesforce(
    *, settings: Settings, session_factory: sessionmaker[Session], alone: bool
) -> Worker | None:
    if not settings.run_salesforce_sync:
        return None
    from crm_ledger.outbound.salesforce.worker import SalesforceSyncWorker

    return SalesforceSyncWorker(settings=settings, session_factory=session_factory)


ROLES["salesforce"] = _salesforce
# Outbound relays (issue 12) -------------------------------------------------------------------


def _nats_relay(
    *, settings: Settings, session_factory: sessionmaker[Session], alone: bool
) -> Worker | None:
    if settings.nats_url is None:
        return None
    from crm_ledger.outbound.relay import nats_relay

    return nats_relay(settings=settings, session_factory=session_factory)


ROLES["nats-relay"] = _nats_relay


def _webhooks(
    *, settings: Settings, session_factory: sessionmaker[Session], alone: bool
) -> Worker | None:
    if not settings.run_webhooks:
        return None
    from crm_ledger.outbound.webhooks.dispatcher import WebhookDispatcher

    return WebhookDispatcher.from_settings(settings=settings, session_factory=session_factory)


ROLES["webhooks"] = _webhooks
