"""What a background worker is, and the states the supervisor shows for it.

Exports: `Worker`, `Preparable`, `Reporting`, `WorkerState`, `WorkerStatus`.

A worker is anything with a `name` and an `async step()` that does one bounded unit of work and
returns how many items it handled (0: nothing to do, the supervisor lets it idle). Everything
else (back-off, standby on the singleton lock, halting, metrics, the `/readyz` entry) belongs to
the supervisor, so a worker's code is only its work.

Optional hooks, found by duck typing:

- `async prepare()`: connect before the first step (and again after `prepare` itself failed);
  may raise `Unavailable` (backed off) or `WorkerHalted` / `ConfigError` (halted).
- `async close()`: release what `prepare` took, when the supervisor stops.
- `report() -> dict`: extra fields for `/readyz` (last batch id, lag, counters...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Worker(Protocol):
    """A background role: see the module docstring."""

    name: str

    async def step(self) -> int:
        """Do one bounded unit of work; return how many items it handled (0: idle)."""
        ...


@runtime_checkable
class Preparable(Protocol):
    """A worker that connects before its first step."""

    async def prepare(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Reporting(Protocol):
    """A worker with more to say in `/readyz` than its state."""

    def report(self) -> dict[str, Any]: ...


class WorkerState(StrEnum):
    """Where a worker is; `/readyz` and the `crm_ledger_worker_state` metric show it."""

    STARTING = "starting"
    #: Another process holds this worker's singleton lock; this one waits to take over.
    STANDBY = "standby"
    #: Stepping: busy, or idle between steps (`items_handled` and the worker's report tell).
    RUNNING = "running"
    #: Something it needs is down; it retries after a pause that grows with each failure.
    BACKING_OFF = "backing_off"
    #: It cannot go on until an operator acts; the message says how.
    HALTED = "halted"
    STOPPED = "stopped"


@dataclass
class WorkerStatus:
    """A worker's state as its supervisor last saw it."""

    name: str
    state: WorkerState = WorkerState.STOPPED
    message: str = ""
    items_handled: int = 0
    failures_in_a_row: int = 0
    since: float = field(default_factory=time.time)

    def set(self, state: WorkerState, message: str = "") -> None:
        """Move to `state`, remembering when it changed."""
        if state is not self.state:
            self.since = time.time()
        self.state = state
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The `/readyz` entry."""
        return {
            "state": self.state.value,
            "message": self.message,
            "items_handled": self.items_handled,
            "failures_in_a_row": self.failures_in_a_row,
            "since": round(self.since, 3),
        }
