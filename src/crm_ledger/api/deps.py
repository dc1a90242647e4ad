"""What handlers receive through `Depends`: settings, a session, the calling key, its role.

Exports: `RuntimeDep`, `SettingsDep`, `SessionDep`, `CurrentKey`, `RecorderKey`, `AnyKey`,
`require_roles`, `ApiKeyCache`, `key_cache`, `PROBLEM_RESPONSES`, `problem_responses`.

Handlers that touch the database are plain `def`, so FastAPI runs them in its threadpool; the
dependencies here are `async` and never block on a cache hit, so a request crosses into a
thread once. The busiest writes (`/v1/interactions`, `/v1/orders`) are `async def` and hand
their write to the group committer's thread directly (`idempotency.run_write_async`), so they
cross into no worker thread at all.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from crm_ledger.api.problems import PROBLEM_MEDIA_TYPE, Problem
from crm_ledger.api.ratelimit import rate_limiter
from crm_ledger.api.transaction import read_only
from crm_ledger.config import Settings
from crm_ledger.errors import Forbidden, Unauthorized
from crm_ledger.journal.keys import (
    KEY_PREFIX,
    MAX_KEY_LENGTH,
    ApiKeyPrincipal,
    KeysChangedMark,
    Role,
    hash_api_key,
    lookup_hash,
)
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.runtime import Runtime

# How long a looked-up key is trusted without asking the database again. A revocation or a
# rotation through `crm-ledger keys` on this host takes effect at once (it touches the changes
# file, which empties the cache); on other hosts sharing the database, within this time.
KEY_CACHE_SECONDS = 5.0
_KEY_CACHE_ENTRIES = 10_000


class ApiKeyCache:
    """Positive key lookups by SHA-256, each trusted for `ttl` seconds (thread-safe).

    With `changes` (the stamp `crm-ledger keys` moves on every revocation and rotation) the
    cache empties itself whenever the stamp moves: one read from memory per lookup.
    """

    def __init__(
        self,
        ttl: float = KEY_CACHE_SECONDS,
        max_entries: int = _KEY_CACHE_ENTRIES,
        *,
        changes: KeysChangedMark | None = None,
    ):
        self.ttl = ttl
        self.max_entries = max_entries
        self.changes = changes
        self._seen_change = self._change_stamp()
        self._entries: dict[bytes, tuple[float, ApiKeyPrincipal]] = {}
        self._lock = threading.Lock()

    def _change_stamp(self) -> int | None:
        return None if self.changes is None else self.changes.stamp()

    def get(self, key_hash: bytes) -> ApiKeyPrincipal | None:
        """The cached principal, or None when absent, stale or the keys changed."""
        stamp = self._change_stamp()
        if stamp != self._seen_change:
            with self._lock:
                self._entries.clear()
                self._seen_change = stamp
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, principal = entry
        if time.monotonic() >= expires:
            with self._lock:
                self._entries.pop(key_hash, None)
            return None
        return principal

    def put(self, key_hash: bytes, principal: ApiKeyPrincipal) -> None:
        """Remember a valid key for `ttl` seconds."""
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        """Forget every key (the next request of each is looked up again)."""
        with self._lock:
            self._entries.clear()


def key_cache(app: FastAPI) -> ApiKeyCache:
    """The app's key cache (made by `crm_ledger.api.install`)."""
    cache = app.state.api_key_cache
    assert isinstance(cache, ApiKeyCache)
    return cache


def get_runtime(request: Request) -> Runtime:
    """The process runtime made by `create_app`."""
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_app_settings(runtime: RuntimeDep) -> Settings:
    """The settings the app was created with (tests override this dependency)."""
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for one request; handlers open transactions with `api.transaction`'s
    `transaction` (to write) or `read_only` (to read)."""
    session = get_runtime(request).session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            # Rolling back may be a round trip: not on the event loop.
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `crm-ledger keys create --role ROLE` (crml_...).",
)


_Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
#: The request's bearer credentials, if any (for checks that authenticate only when needed).
BearerCredentials = _Credentials


async def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> ApiKeyPrincipal:
    if credentials is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer crml_...'")
    token = credentials.credentials
    if not token.startswith(KEY_PREFIX) or len(token) > MAX_KEY_LENGTH:
        raise Unauthorized("the API key is not valid (crm-ledger keys start with 'crml_')")
    key_hash = hash_api_key(token)
    cache = key_cache(request.app)
    principal = cache.get(key_hash)
    if principal is None:
        principal = await run_in_threadpool(_lookup, get_runtime(request), key_hash)
        if principal is None:
            raise Unauthorized("the API key is unknown or was revoked")
        cache.put(key_hash, principal)
    if principal.expired():
        assert principal.expires_at is not None
        raise Unauthorized(
            f"the API key {principal.id} expired at {format_timestamp(principal.expires_at)}; "
            "ask an operator for a new one (`crm-ledger keys create`, or `keys rotate` before a "
            "key expires)"
        )
    # For the access log (`RequestLogMiddleware`): the key's id and role, never the key.
    request.state.api_key = principal
    rate_limiter(request.app).take(principal)
    return principal


def _lookup(runtime: Runtime, key_hash: bytes) -> ApiKeyPrincipal | None:
    with runtime.session_factory() as session, read_only(session):
        return lookup_hash(session, key_hash)


async def get_current_key(request: Request, credentials: _Credentials) -> ApiKeyPrincipal:
    """The principal of the request's `Authorization: Bearer` key; raises `Unauthorized`."""
    return await _authenticate(request, credentials)


CurrentKey = Annotated[ApiKeyPrincipal, Depends(get_current_key)]


@functools.cache
def require_roles(
    *roles: Role | str,
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Awaitable[ApiKeyPrincipal]]:
    """A dependency that lets through keys with one of `roles` and answers 403 to the rest.

    It authenticates by itself rather than depending on `CurrentKey`: one dependency less to
    solve on every write. Cached, so the same roles give the same guard and FastAPI runs it
    once per request however many dependencies ask for it (`api.writes`).
    """
    allowed = tuple(Role(role) for role in roles)
    names = ", ".join(role.value for role in allowed)

    async def guard(request: Request, credentials: _Credentials) -> ApiKeyPrincipal:
        key = await _authenticate(request, credentials)
        if key.role not in allowed:
            raise Forbidden(
                f"this operation needs a key with one of the roles {names}; "
                f"this key has role {key.role}",
                allowed_roles=[role.value for role in allowed],
            )
        return key

    return guard


RecorderKey = Annotated[ApiKeyPrincipal, Depends(require_roles(Role.RECORDER, Role.ADMIN))]
AuditorKey = Annotated[ApiKeyPrincipal, Depends(require_roles(Role.AUDITOR, Role.ADMIN))]
MarketingKey = Annotated[ApiKeyPrincipal, Depends(require_roles(Role.MARKETING, Role.ADMIN))]
RedeemerKey = Annotated[
    ApiKeyPrincipal, Depends(require_roles(Role.RECORDER, Role.MARKETING, Role.ADMIN))
]
AdminKey = Annotated[ApiKeyPrincipal, Depends(require_roles(Role.ADMIN))]
AnyKey = CurrentKey


#: Every problem status the API answers and when, for `responses=` in the OpenAPI document: a
#: route file picks the ones its operations can answer with `problem_responses(...)`. Which
#: dependency brings which status: an API key 401 and 429, a role guard 403, a request body 413
#: and 422, any parameter 422, an `Idempotency-Key` 409 (tests/api/test_openapi.py checks).
PROBLEM_RESPONSES: dict[int, dict[str, Any]] = {
    status: {
        "model": Problem,
        "content": {PROBLEM_MEDIA_TYPE: {}},
        "description": description,
    }
    for status, description in {
        401: "No API key, or one that is unknown, revoked or expired",
        403: "The key's role may not do this",
        404: "No such resource",
        409: "A conflict with the current state, or an Idempotency-Key reused for another request",
        410: "Gone: the cursor points at events that were pruned",
        413: "The request body is over the size limit",
        422: "The request is invalid (each field says why), or its body is not UTF-8 JSON",
        429: "The key is over its rate limit; the Retry-After header says when to try again",
        503: "A service this operation needs (the chain) is unavailable; try again later",
    }.items()
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `PROBLEM_RESPONSES` entries of `statuses`, for a route's `responses=`."""
    return {status: PROBLEM_RESPONSES[status] for status in statuses}
