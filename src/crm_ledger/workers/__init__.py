"""The runtime every background role runs under: one supervisor, workers as peers.

Exports: `Worker`, `WorkerState`, `WorkerStatus`, `WorkerHalted`, `Supervisor`, `Backoff`,
`SingletonLock`. Which workers a process runs is `crm_ledger.roles`'s.

A worker implements `step()` (see `workers.base`); the supervisor (`workers.supervisor`) owns
back-off with jitter, standby on the singleton lock, halting, metrics and the `/readyz` entry.
"""

from crm_ledger.errors import WorkerHalted
from crm_ledger.workers.backoff import Backoff
from crm_ledger.workers.base import Worker, WorkerState, WorkerStatus
from crm_ledger.workers.lock import SingletonLock
from crm_ledger.workers.supervisor import Supervisor

__all__ = [
    "Backoff",
    "SingletonLock",
    "Supervisor",
    "Worker",
    "WorkerHalted",
    "WorkerState",
    "WorkerStatus",
]
