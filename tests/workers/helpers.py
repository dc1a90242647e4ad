"""Run workers under a real supervisor in tests, and wait for what they do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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


async def until(condition: Callable[[], object], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` every 20 ms until it is truthy; AssertionError after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.02)
