"""Recording the calls a test's fake receives."""

from __future__ import annotations

from typing import Any


def record_calls(fake: object, method: str) -> list[tuple[Any, ...]]:
    """Replace the async `method` of `fake` with one that records each call's positional
    arguments, then awaits the original; returns the list it appends to."""
    calls: list[tuple[Any, ...]] = []
    original = getattr(fake, method)

    async def recorded(*args: Any) -> Any:
        calls.append(args)
        return await original(*args)

    setattr(fake, method, recorded)
    return calls
