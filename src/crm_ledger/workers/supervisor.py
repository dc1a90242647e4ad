"""One supervisor runs every background worker of a process, each as a peer task.

Exports: `Supervisor`.

For each worker, forever until `stop()`:

1. take the worker's singleton lock (`SingletonLock(name=worker.name)`); while another process
   holds it, stand by (state `standby`) and ask again every `standby_seconds`;
2. `prepare()` it if it has that hook (connecting to a node, a broker...);
3. `step()`; a step that handled items runs again at once, an idle one waits `idle_seconds` or
   until `wake(name)`;
4. a failure is backed off (`Backoff`: exponential with jitter, capped): `Unavailable` and
   database errors quietly, anything unexpected with its traceback in the log; nothing a worker
   raises stops the API or another worker;
5. `WorkerHalted`, `ConfigError` or a `ChainError` other than `ChainUnavailable` (a reset chain,
   a node answering what cannot be on its chain) halt the worker (state `halted`, the message in
   `/readyz`) until the process restarts: an operator must act.

Usage::

    supervisor = Supervisor(engine=engine, max_backoff_seconds=10)
    supervisor.add(relay)                   # singleton per journal
    supervisor.add(checker, singleton=False, idle_seconds=5)
    await supervisor.start()
    ...
    await supervisor.stop()                 # lets running steps finish, releases the locks
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from crm_ledger import metrics
from crm_ledger.errors import ChainError, ConfigError, Unavailable, WorkerHalted
from crm_ledger.workers.backoff import Backoff
from crm_ledger.workers.base import Preparable, Reporting, Worker, WorkerState, WorkerStatus
from crm_ledger.workers.lock import SingletonLock

log = logging.getLogger(__name__)

#: Errors after which a worker cannot go on until an operator acts (a chain error that is not
#: mere unavailability: a reset chain, a node answering what cannot be on its chain...).
HALTING = (WorkerHalted, ConfigError, ChainError)
#: Errors that are the world's, not a bug: logged in one line, without a traceback.
TRANSIENT = (Unavailable, DBAPIError)


@dataclass
class _Entry:
    worker: Worker
    status: WorkerStatus
    idle_seconds: float
    max_backoff_seconds: float
    lock: SingletonLock | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Runs workers as peers; see the module docstring."""

    def __init__(
        self,
        *,
        engine: Engine | None,
        idle_seconds: float = 0.5,
        standby_seconds: float = 1.0,
        initial_backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
    ) -> None:
        self._engine = engine
        self._idle_seconds = idle_seconds
        self._standby_seconds = standby_seconds
        self._initial_backoff = initial_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._entries: dict[str, _Entry] = {}
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(
        self,
        worker: Worker,
        *,
        singleton: bool = True,
        idle_seconds: float | None = None,
        max_backoff_seconds: float | None = None,
    ) -> None:
        """Run `worker` from `start()` on (or at once, if already started); the pauses default
        to the supervisor's."""
        if worker.name in self._entries:
            raise ValueError(f"a worker named {worker.name!r} runs already")
        lock = None
        if singleton:
            if self._engine is None:
                raise ValueError(f"the singleton worker {worker.name!r} needs the journal engine")
            lock = SingletonLock(self._engine, name=worker.name)
        entry = _Entry(
            worker=worker,
            status=WorkerStatus(name=worker.name),
            idle_seconds=self._idle_seconds if idle_seconds is None else idle_seconds,
            max_backoff_seconds=(
                self._max_backoff if max_backoff_seconds is None else max_backoff_seconds
            ),
            lock=lock,
        )
        self._entries[worker.name] = entry
        if self._loop is not None:
            self._launch(entry)

    @property
    def names(self) -> list[str]:
        """The workers' names, in the order they were added."""
        return list(self._entries)

    def worker(self, name: str) -> Worker | None:
        """The worker named `name`, if this supervisor runs it."""
        entry = self._entries.get(name)
        return entry.worker if entry is not None else None

    def status(self) -> dict[str, dict[str, Any]]:
        """Each worker's `/readyz` entry: its state, and what the worker itself reports."""
        report: dict[str, dict[str, Any]] = {}
        for name, entry in self._entries.items():
            body = entry.status.to_json()
            if isinstance(entry.worker, Reporting):
                with contextlib.suppress(Exception):
                    body.update(entry.worker.report())
            report[name] = body
        return report

    def wake(self, name: str) -> None:
        """Let an idle worker step now (from any thread): there is something new for it."""
        entry, loop = self._entries.get(name), self._loop
        if entry is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(entry.wake.set)

    async def start(self) -> None:
        """Start every worker's task; returns at once."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        for entry in self._entries.values():
            self._launch(entry)

    async def stop(self) -> None:
        """Stop every worker (a running step finishes first) and release their locks."""
        self._stop.set()
        for entry in self._entries.values():
            entry.wake.set()
        tasks = [entry.task for entry in self._entries.values() if entry.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for entry in self._entries.values():
            entry.task = None
        self._loop = None

    async def wait(self) -> None:
        """Until every worker has stopped or halted (`crm-ledger worker NAME` waits on this)."""
        tasks = [entry.task for entry in self._entries.values() if entry.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def _launch(self, entry: _Entry) -> None:
        entry.task = asyncio.create_task(self._run(entry), name=f"crm-ledger-{entry.status.name}")

    async def _run(self, entry: _Entry) -> None:
        worker, status = entry.worker, entry.status
        backoff = Backoff(initial=self._initial_backoff, maximum=entry.max_backoff_seconds)
        prepared = not isinstance(worker, Preparable)
        self._show(status, WorkerState.STARTING)
        try:
            while not self._stop.is_set():
                if entry.lock is not None and not await asyncio.to_thread(entry.lock.try_acquire):
                    self._show(
                        status,
                        WorkerState.STANDBY,
                        f"another process holds the {worker.name} lock; this one stands by",
                    )
                    await self._pause(entry, self._standby_seconds)
                    continue
                try:
                    if not prepared:
                        self._show(status, WorkerState.STARTING)
                        await worker.prepare()  # type: ignore[attr-defined]
                        prepared = True
                    handled = int(await worker.step())
                except Exception as exc:
                    if isinstance(exc, HALTING) and not isinstance(exc, Unavailable):
                        log.error("%s halted: %s", worker.name, exc)
                        self._show(status, WorkerState.HALTED, str(exc))
                        return
                    pause = backoff.next()
                    status.failures_in_a_row = backoff.failures
                    message = _describe(exc)
                    metrics.worker_failures_total.labels(worker=worker.name).inc()
                    if isinstance(exc, TRANSIENT):
                        log.warning("%s: %s; again in %.1f s", worker.name, message, pause)
                    else:
                        log.exception("%s failed unexpectedly; again in %.1f s", worker.name, pause)
                    self._show(status, WorkerState.BACKING_OFF, message)
                    await self._pause(entry, pause)
                    continue
                backoff.reset()
                status.failures_in_a_row = 0
                status.items_handled += handled
                metrics.worker_items_total.labels(worker=worker.name).inc(handled)
                self._show(status, WorkerState.RUNNING)
                if handled:
                    await asyncio.sleep(0)  # let the API's requests in between busy steps
                else:
                    await self._pause(entry, entry.idle_seconds)
        finally:
            if status.state is not WorkerState.HALTED:
                self._show(status, WorkerState.STOPPED)
            if prepared and isinstance(worker, Preparable):
                with contextlib.suppress(Exception):
                    await worker.close()
            if entry.lock is not None:
                await asyncio.to_thread(entry.lock.release)

    async def _pause(self, entry: _Entry, seconds: float) -> None:
        """Sleep `seconds`, or less when woken or stopped."""
        entry.wake.clear()
        if self._stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(entry.wake.wait(), timeout=seconds)

    @staticmethod
    def _show(status: WorkerStatus, state: WorkerState, message: str = "") -> None:
        if state is not status.state:
            metrics.worker_state.labels(worker=status.name, state=status.state.value).set(0)
            metrics.worker_state.labels(worker=status.name, state=state.value).set(1)
        status.set(state, message)


def _describe(exc: BaseException) -> str:
    """One line for the log and `/readyz`: a DB error's driver message, not its SQL."""
    if isinstance(exc, DBAPIError):
        return f"database error: {exc.orig or exc}".splitlines()[0]
    return str(exc) or type(exc).__name__
