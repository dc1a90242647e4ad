"""The supervisor: workers as peers, back-off, halting, standby on the singleton lock, waking."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine

from crm_ledger.errors import ChainUnavailable, ConfigError, Unavailable, WorkerHalted
from crm_ledger.workers import Backoff, Supervisor, WorkerState
from tests.waiting import until


class ScriptedWorker:
    """Steps through `script`: an int is items handled, an exception is raised; then idles."""

    def __init__(self, name: str, script: list[int | Exception] | None = None) -> None:
        self.name = name
        self.script = list(script or [])
        self.steps = 0

    async def step(self) -> int:
        self.steps += 1
        if not self.script:
            return 0
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class PreparingWorker(ScriptedWorker):
    def __init__(self, name: str, prepare_failures: int) -> None:
        super().__init__(name)
        self.prepare_failures = prepare_failures
        self.prepared = 0
        self.closed = 0

    async def prepare(self) -> None:
        if self.prepare_failures:
            self.prepare_failures -= 1
            raise ChainUnavailable("node down")
        self.prepared += 1

    async def close(self) -> None:
        self.closed += 1

    def report(self) -> dict[str, Any]:
        return {"prepared": self.prepared}


def fast(engine: Engine | None) -> Supervisor:
    return Supervisor(
        engine=engine,
        idle_seconds=0.02,
        standby_seconds=0.05,
        initial_backoff_seconds=0.01,
        max_backoff_seconds=0.05,
    )


@pytest.mark.asyncio
async def test_busy_steps_run_back_to_back_then_the_worker_idles() -> None:
    worker = ScriptedWorker("busy", [5, 7, 1])
    supervisor = Supervisor(engine=None, idle_seconds=60)
    supervisor.add(worker, singleton=False)
    await supervisor.start()
    await until(lambda: worker.steps == 4)
    await asyncio.sleep(0.1)
    assert worker.steps == 4, "an idle step waits idle_seconds before the next"
    assert supervisor.status()["busy"]["state"] == "running"
    await supervisor.stop()
    status = supervisor.status()["busy"]
    assert status["items_handled"] == 13
    assert status["state"] == WorkerState.STOPPED


@pytest.mark.asyncio
async def test_unavailable_backs_off_and_recovers_while_a_peer_keeps_working() -> None:
    flaky = ScriptedWorker("flaky", [Unavailable("broker down")] * 3 + [4])
    peer = ScriptedWorker("peer", [1] * 50)
    supervisor = fast(None)
    supervisor.add(flaky, singleton=False)
    supervisor.add(peer, singleton=False)
    seen: set[str] = set()
    await supervisor.start()

    def flaky_done() -> bool:
        status = supervisor.status()["flaky"]
        seen.add(status["state"])
        return status["items_handled"] == 4

    await until(flaky_done)
    assert "backing_off" in seen
    assert supervisor.status()["flaky"]["failures_in_a_row"] == 0
    await until(lambda: supervisor.status()["peer"]["items_handled"] == 50)
    await supervisor.stop()


@pytest.mark.parametrize(
    "error", [WorkerHalted("recover first"), ConfigError("bad key"), ChainUnavailable("x")]
)
@pytest.mark.asyncio
async def test_halting_errors_halt_only_their_worker(error: Exception) -> None:
    failing = ScriptedWorker("failing", [error, 3])
    peer = ScriptedWorker("peer", [2] * 20)
    supervisor = fast(None)
    supervisor.add(failing, singleton=False)
    supervisor.add(peer, singleton=False)
    await supervisor.start()
    await until(lambda: supervisor.status()["peer"]["items_handled"] == 40)
    await until(lambda: failing.steps >= 1)
    if isinstance(error, Unavailable):
        await until(lambda: supervisor.status()["failing"]["items_handled"] == 3)
    else:
        status = supervisor.status()["failing"]
        assert status["state"] == "halted"
        assert status["message"] == str(error)
        assert failing.steps == 1
    await supervisor.stop()
    assert supervisor.status()["failing"]["state"] == (
        "stopped" if isinstance(error, Unavailable) else "halted"
    )


@pytest.mark.asyncio
async def test_an_unexpected_error_is_backed_off_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = ScriptedWorker("buggy", [ZeroDivisionError("oops"), 2])
    supervisor = fast(None)
    supervisor.add(worker, singleton=False)
    await supervisor.start()
    await until(lambda: supervisor.status()["buggy"]["items_handled"] == 2)
    await supervisor.stop()
    assert any("buggy failed unexpectedly" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_prepare_is_retried_then_close_runs_at_stop() -> None:
    worker = PreparingWorker("connecting", prepare_failures=2)
    worker.script = [1]
    supervisor = fast(None)
    supervisor.add(worker, singleton=False)
    await supervisor.start()
    await until(lambda: supervisor.status()["connecting"]["items_handled"] == 1)
    assert supervisor.status()["connecting"]["prepared"] == 1
    await supervisor.stop()
    assert (worker.prepared, worker.closed) == (1, 1)


@pytest.mark.asyncio
async def test_wake_cuts_an_idle_pause_short() -> None:
    worker = ScriptedWorker("sleepy")
    supervisor = Supervisor(engine=None, idle_seconds=60)
    supervisor.add(worker, singleton=False)
    await supervisor.start()
    await until(lambda: worker.steps == 1)
    worker.script.append(9)
    supervisor.wake("sleepy")
    await until(lambda: supervisor.status()["sleepy"]["items_handled"] == 9, timeout=5)
    await supervisor.stop()


@pytest.mark.asyncio
async def test_a_second_process_stands_by_until_the_lock_frees(engine: Engine) -> None:
    first, second = fast(engine), fast(engine)
    first.add(ScriptedWorker("relay", [1]))
    second_worker = ScriptedWorker("relay", [1])
    second.add(second_worker)
    await first.start()
    await until(lambda: first.status()["relay"]["items_handled"] == 1)
    await second.start()
    await until(lambda: second.status()["relay"]["state"] == "standby")
    assert second_worker.steps == 0
    await first.stop()
    await until(lambda: second.status()["relay"]["items_handled"] == 1)
    await second.stop()


def test_a_singleton_worker_needs_the_engine() -> None:
    with pytest.raises(ValueError, match="needs the journal engine"):
        Supervisor(engine=None).add(ScriptedWorker("relay"))


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0, jitter=0.25)
    pauses = [backoff.next() for _ in range(6)]
    for pause, base in zip(pauses, [0.5, 1.0, 2.0, 3.0, 3.0, 3.0], strict=True):
        assert base <= pause <= min(base + 0.25, 3.0)
    backoff.reset()
    assert backoff.next() <= 0.75
