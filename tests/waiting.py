"""The one polling helper of the tests: wait until something the service does in the background
shows, and fail the test (never hang) when it does not.

`wait_for(probe)` returns `probe()`'s first truthy answer (or the first that `until` accepts);
`wait_for_async` is the same for a coroutine probe, polled without blocking the event loop;
`until(condition)` waits in a coroutine for a plain condition (what a worker under test shows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two polls: short enough not to slow a test, long enough not to spin.
INTERVAL = 0.05


def wait_for(
    probe: Callable[[], T],
    timeout: float = 60.0,
    *,
    until: Callable[[T], object] = bool,
    what: str | Callable[[], object] = "the condition",
    interval: float = INTERVAL,
) -> T:
    """Poll `probe()` until `until(answer)` holds; the answer. After `timeout` seconds the test
    fails, naming `what` (called then if it is a function, to show the state) and the last
    answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if until(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout, answer))
        time.sleep(interval)


async def wait_for_async(
    probe: Callable[[], Awaitable[T]],
    timeout: float = 60.0,
    *,
    until: Callable[[T], object] = bool,
    what: str | Callable[[], object] = "the condition",
    interval: float = INTERVAL,
) -> T:
    """`wait_for` of a coroutine probe, sleeping with `asyncio.sleep` between polls."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await probe()
        if until(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout, answer))
        await asyncio.sleep(interval)


def _timed_out(what: str | Callable[[], object], timeout: float, answer: object) -> str:
    described = what() if callable(what) else what
    return f"{described}: not within {timeout:g} s (last answer: {answer!r:.500})"


async def until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    *,
    what: str | Callable[[], object] = "the condition",
    interval: float = INTERVAL,
) -> None:
    """`wait_for_async` of a plain (not async) `condition`, for tests inside the event loop."""

    async def probe() -> object:
        return condition()

    await wait_for_async(probe, timeout, what=what, interval=interval)
