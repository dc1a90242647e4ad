"""What a write handler receives: its session, the calling key and its Idempotency-Key, in one.

Exports: `Writes`, `writes_for`, `RecorderWrites`, `MarketingWrites`, `RedeemerWrites`,
`AdminWrites`.

A handler that writes takes `writes: RecorderWrites` (or the alias of its roles) instead of a
session, a key and an `Idempotency-Key` header, and answers `await writes.run(payload, write, ...)`
(`async def` handlers) or `writes.run_sync(payload, write, ...)` (plain `def` ones): the same
`run_write_async` / `run_write` of `api.idempotency`, with the arguments every write repeats
filled in.

This module does not use `from __future__ import annotations`: `writes_for` builds its
dependency inside a function, and FastAPI resolves string annotations in the module's globals
only, where that function's role guard is not.
"""

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import Response

from crm_ledger.api.deps import BearerCredentials, get_runtime, require_roles
from crm_ledger.api.idempotency import (
    Idempotency,
    IdempotencyKeyHeader,
    Written,
    run_write,
    run_write_async,
)
from crm_ledger.journal.keys import ApiKeyPrincipal, Role

Write = Callable[[Session], str | Written]


@dataclass(frozen=True, slots=True)
class Writes:
    """One request's idempotent write: run `write` with `run` or `run_sync`."""

    session_factory: sessionmaker[Session]
    principal: ApiKeyPrincipal
    idempotency: Idempotency

    async def run(
        self,
        payload: BaseModel,
        write: Write,
        *,
        status_code: int = 200,
        on_commit: Callable[[], None] | None = None,
    ) -> Response:
        """`run_write_async` of `write` (its JSON body) for `payload`, from an `async def`."""
        return await run_write_async(**self._arguments(payload, write, status_code, on_commit))

    def run_sync(
        self,
        payload: BaseModel,
        write: Write,
        *,
        status_code: int = 200,
        on_commit: Callable[[], None] | None = None,
    ) -> Response:
        """`run_write` of `write` for `payload`: blocks, so from a plain `def` handler."""
        return run_write(**self._arguments(payload, write, status_code, on_commit))

    def _arguments(
        self,
        payload: BaseModel,
        write: Write,
        status_code: int,
        on_commit: Callable[[], None] | None,
    ) -> dict[str, Any]:
        return {
            "sessions": self.session_factory,
            "principal": self.principal,
            "idempotency": self.idempotency,
            "payload": payload,
            "status_code": status_code,
            "write": write,
            "on_commit": on_commit,
        }


@functools.cache
def writes_for(*roles: Role) -> Callable[..., Awaitable[Writes]]:
    """The dependency that makes a `Writes` for a key with one of `roles` (403 for others).

    One dependency with no others under it but the bearer credentials: it runs the role guard
    (`require_roles(*roles)`, which authenticates) and reads the `Idempotency-Key` header
    itself, and its `Writes` opens no session (the write runs in the group committer's).
    FastAPI spends some 10 to 40 microseconds on each dependency it solves (a `yield` one
    costs the most), and these are the busiest endpoints; the OpenAPI document still shows
    the key and the header.
    """
    guard = require_roles(*roles)

    async def writes(
        request: Request, credentials: BearerCredentials, key: IdempotencyKeyHeader = None
    ) -> Writes:
        principal = await guard(request, credentials)
        return Writes(
            session_factory=get_runtime(request).session_factory,
            principal=principal,
            idempotency=Idempotency(key=key, method=request.method, path=request_path(request)),
        )

    return writes


def request_path(request: Request) -> str:
    """`request.url.path`, without parsing the whole URL as `request.url` does (a third of a
    dependency's cost): Starlette builds it from the scope's path with these three characters
    escaped, and an Idempotency-Key's fingerprint holds it, so it must stay byte for byte the
    same (tests/api/test_idempotency.py compares the two)."""
    path: str = request.scope["path"]
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


RecorderWrites = Annotated[Writes, Depends(writes_for(Role.RECORDER, Role.ADMIN))]
MarketingWrites = Annotated[Writes, Depends(writes_for(Role.MARKETING, Role.ADMIN))]
RedeemerWrites = Annotated[Writes, Depends(writes_for(Role.RECORDER, Role.MARKETING, Role.ADMIN))]
AdminWrites = Annotated[Writes, Depends(writes_for(Role.ADMIN))]
