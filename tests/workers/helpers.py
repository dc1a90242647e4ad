"""Run workers under a real supervisor in tests (wait for what they do with `tests.waiting`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Engine

from crm_ledger.workers import Supervisor, Worker


@asynccontextmanager
async def supervised(*workers: Worker, engine: Engine | None = None) -> AsyncIterator[Supervisor]:
    """A started supervisor running `workers` (singletons when `engine` is given), quick to
    retry; stopped on exit."""
    supervisor = Supervisor(
        engine=engine,
        idle_seconds=0.02,
        standby_seconds=0.05,
        initial_backoff_seconds=0.02,
        max_backoff_seconds=0.2,
    )
    for worker in workers:
        supervisor.add(worker, singleton=engine is not None)
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()
