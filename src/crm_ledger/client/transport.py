"""Sending one call to the service: configuration, Idempotency-Key, retries with back-off.

Exports: `Call`, `Settings`, `Send`, `ASend`, `RETRY_STATUSES`, `send`, `asend`.

A call is retried on connection errors, timeouts, 429 and 503, waiting what `Retry-After`
says or else exponential back-off with jitter (tenacity), up to `max_retries` times. Every POST
and DELETE carries an `Idempotency-Key` (the caller's, or a fresh UUID) and every retry reuses
it, so the service records a write once however often it is sent.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from crm_ledger.client.errors import (
    ConnectionFailed,
    error_from_response,
    retry_after_seconds,
)

#: Statuses worth asking again: rate limited, and temporarily unavailable.
RETRY_STATUSES = frozenset({429, 503})
DEFAULT_URL = "http://127.0.0.1:8000"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Settings:
    """How a client reaches the service; `from_env` fills what is not given."""

    base_url: str
    api_key: str | None
    timeout: float = 10.0
    max_retries: int = 5
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    @classmethod
    def from_env(cls, base_url: str | None, api_key: str | None, **options: Any) -> Settings:
        """`base_url` or `CRM_LEDGER_URL` (default http://127.0.0.1:8000), `api_key` or
        `CRM_LEDGER_API_KEY`."""
        return cls(
            base_url=(base_url or os.environ.get("CRM_LEDGER_URL") or DEFAULT_URL).rstrip("/"),
            api_key=api_key or os.environ.get("CRM_LEDGER_API_KEY"),
            **options,
        )

    def headers(self) -> dict[str, str]:
        """Headers every request carries."""
        found = {"Accept": "application/json", "User-Agent": "crm-ledger-python"}
        if self.api_key:
            found["Authorization"] = f"Bearer {self.api_key}"
        return found


@dataclass(frozen=True, slots=True)
class Call:
    """One request to the service, described before it is sent."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, str | int] = field(default_factory=dict)
    idempotency_key: str | None = None

    def headers(self) -> dict[str, str]:
        """The Idempotency-Key of a write (the caller's or a new one), nothing for a read."""
        if self.method not in _WRITES:
            return {}
        return {"Idempotency-Key": self.idempotency_key or str(uuid.uuid4())}


#: How a resource sends a call: the client's `send` (sync) or `asend` (async), bound to it.
Send = Callable[[Call], httpx.Response]
ASend = Callable[[Call], Awaitable[httpx.Response]]


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


_RETRYABLE = (_RetryableStatus, httpx.TransportError)


def _wait(settings: Settings) -> Any:
    backoff = wait_random_exponential(multiplier=settings.backoff, max=settings.max_backoff)

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _RetryableStatus):
            advised = retry_after_seconds(error.response)
            if advised is not None:
                return min(advised, settings.max_retry_after)
        return float(backoff(state))

    return wait


def _policy(settings: Settings) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": _wait(settings),
        "retry": retry_if_exception_type(_RETRYABLE),
        "reraise": True,
    }


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code in RETRY_STATUSES:
        response.read()
        raise _RetryableStatus(response)
    return response


def _outcome(call: Call, settings: Settings, error: Exception) -> Exception:
    if isinstance(error, _RetryableStatus):
        return error_from_response(error.response)
    return ConnectionFailed(
        f"{call.method} {call.path}: no answer from {settings.base_url} after "
        f"{settings.max_retries + 1} attempts ({type(error).__name__})"
    )


def send(http: httpx.Client, settings: Settings, call: Call) -> httpx.Response:
    """Send `call` with retries; a 2xx/3xx response, else the matching `ApiError` raised."""
    headers = call.headers()
    try:
        for attempt in Retrying(**_policy(settings)):
            with attempt:
                response = _checked(
                    http.request(
                        call.method, call.path, json=call.json, params=call.params, headers=headers
                    )
                )
    except _RETRYABLE as exc:
        raise _outcome(call, settings, exc) from None
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


async def asend(http: httpx.AsyncClient, settings: Settings, call: Call) -> httpx.Response:
    """`send` for an `httpx.AsyncClient`."""
    headers = call.headers()
    try:
        async for attempt in AsyncRetrying(**_policy(settings)):
            with attempt:
                response = _checked(
                    await http.request(
                        call.method, call.path, json=call.json, params=call.params, headers=headers
                    )
                )
    except _RETRYABLE as exc:
        raise _outcome(call, settings, exc) from None
    if response.status_code >= 400:
        raise error_from_response(response)
    return response
