"""The client library's exceptions, one per kind of RFC 9457 problem the service answers.

Exports: `ClientError`, `ConnectionFailed`, `ApiError`, `BadRequest`, `Unauthorized`,
`Forbidden`, `NotFound`, `Conflict`, `IdempotencyConflict`, `Gone`, `PayloadTooLarge`,
`ValidationFailed`, `RateLimited`, `ServiceUnavailable`, `ServerError`, `NotAnchoredYet`,
`FieldError`, `error_from_response`.

    ClientError
    ├── ConnectionFailed(ConnectionError)   no answer after every retry (refused, reset, timeout)
    ├── NotAnchoredYet(TimeoutError)        `receipt(wait=True)` gave up waiting for the batch
    └── ApiError                            the service answered a problem document
        ├── BadRequest (400)  Unauthorized (401)  Forbidden (403)  NotFound (404)
        ├── Conflict (409)
        │   └── IdempotencyConflict         the Idempotency-Key was used for another request
        ├── Gone (410)  PayloadTooLarge (413)
        ├── ValidationFailed(ValueError) (422, or refused before sending)  `.errors`: fields
        ├── RateLimited (429)  ServiceUnavailable (503)   after every retry; `.retry_after`
        └── ServerError (other 5xx)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx


class ClientError(Exception):
    """Root of every error the client raises on purpose."""


class ConnectionFailed(ClientError, ConnectionError):
    """The service could not be reached or did not answer in time, after every retry."""


class NotAnchoredYet(ClientError, TimeoutError):
    """The record's batch was not on chain within the time `receipt(wait=True)` was given."""

    def __init__(self, message: str, *, record_id: str) -> None:
        super().__init__(message)
        self.record_id = record_id


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad field of a request: where (`body`, `query`, `path`), which, and why."""

    location: str
    field: str
    message: str


class ApiError(ClientError):
    """The service answered an RFC 9457 problem document.

    `status`, `type`, `title`, `detail` are the document's; `problem` is all of it.
    """

    def __init__(self, problem: dict[str, Any], *, status: int, retry_after: float | None) -> None:
        self.problem = problem
        self.status = status
        self.type = str(problem.get("type", "about:blank"))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", self.title))
        self.retry_after = retry_after
        super().__init__(f"{status} {self.title}: {self.detail}")


class BadRequest(ApiError):
    """400: the request cannot be understood."""


class Unauthorized(ApiError):
    """401: no API key, or one the service does not know (or revoked)."""


class Forbidden(ApiError):
    """403: the API key's role may not do this."""


class NotFound(ApiError):
    """404: no such customer, record, campaign..."""


class Conflict(ApiError):
    """409: the request clashes with the ledger's state (e.g. an erased customer)."""


class IdempotencyConflict(Conflict):
    """409: the Idempotency-Key was already used for a different request."""


class Gone(ApiError):
    """410: e.g. a change-feed cursor older than the retention."""


class PayloadTooLarge(ApiError):
    """413: the body is over the service's limit."""


class ValidationFailed(ApiError, ValueError):
    """422 (or refused before sending): `errors` lists each bad field."""

    @property
    def errors(self) -> list[FieldError]:
        """The problem's `errors`, one per bad field."""
        return [
            FieldError(
                location=str(entry.get("location", "body")),
                field=str(entry.get("field", "")),
                message=str(entry.get("message", "")),
            )
            for entry in self.problem.get("errors", [])
            if isinstance(entry, dict)
        ]


class RateLimited(ApiError):
    """429, still after every retry; `retry_after` is the service's advice in seconds."""


class ServiceUnavailable(ApiError):
    """503, still after every retry (e.g. the chain node is down for an audit)."""


class ServerError(ApiError):
    """Any other 5xx: a bug in the service; the problem's `detail` says what to report."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The response's `Retry-After` in seconds (delta-seconds only), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for a 4xx/5xx answer, from its problem document (or its bare text)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text[:500] or response.reason_phrase
        body = {"title": response.reason_phrase, "status": response.status_code, "detail": text}
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else BadRequest
    if kind is Conflict and str(body.get("type", "")).endswith(":idempotency-conflict"):
        kind = IdempotencyConflict
    return kind(body, status=response.status_code, retry_after=retry_after_seconds(response))
