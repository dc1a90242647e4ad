"""RFC 9457 problem details: every error the API answers has this shape.

Exports: `Problem`, `problem_response`, `install_problem_handlers`, `document_unavailable`,
`PROBLEM_MEDIA_TYPE`.

    {"type": "urn:crm-ledger:problem:not-found", "title": "Not found", "status": 404,
     "detail": "no customer with id '…'", "instance": "/v1/customers/…", ...extras}

`type` is a URN per kind of problem; `detail` says what to do about this occurrence. Validation
problems add `errors`: one entry per bad field, `{"location", "field", "message", "type"}`, where
`field` is a path such as `lines[0].quantity`. Request values are never echoed back: they may be
personal data, and they may be large. What a message does quote of the request (a field path, a
JSON key, an id) passes through `safe_text` (`journal.schemas`, where validators quote input
too) when the document is rendered: lone surrogates, control and format characters are escaped
and long text is cut, so no input can break the rendering (a 500) or a terminal reading a log.

A database that cannot take a request (disk full, restarting, unreachable, locked) answers 503
`database-unavailable` with `Retry-After`: the transaction rolled back, nothing was recorded,
and the same request with the same Idempotency-Key may simply be sent again. Every operation
documents that 503 (`document_unavailable`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from crm_ledger.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    IdempotencyConflict,
    KeyUnavailable,
    NotFound,
    PayloadTooLarge,
    RequestError,
    TooManyRequests,
    TryLater,
    Unauthorized,
    Unprocessable,
)
from crm_ledger.feed import CursorExpired
from crm_ledger.ingest.inbox import MalformedDelivery
from crm_ledger.journal.schemas import MAX_QUOTED_CHARS, safe_text
from crm_ledger.outbound.webhooks.urls import UnsafeWebhookUrl

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:crm-ledger:problem:"
_RESERVED = frozenset({"type", "title", "status", "detail", "instance"})


class Problem(BaseModel):
    """An RFC 9457 problem (documentation model; extra members vary by problem)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


# A field path is cut shorter than other quoted text: the detail lists the paths.
_FIELD_CHARS = 200


def _safe(value: Any) -> Any:
    """Every string (keys included) of a JSON-able value through `safe_text`."""
    if isinstance(value, str):
        return safe_text(value, limit=MAX_QUOTED_CHARS)
    if isinstance(value, dict):
        return {safe_text(str(k), limit=MAX_QUOTED_CHARS): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(item) for item in value]
    return value


def problem_type(name: str) -> str:
    """The `type` URN for a problem named in CamelCase or words: "NotFound" → ...:not-found."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").split()
    return _TYPE_PREFIX + "-".join(word.lower() for word in words)


def problem_response(
    *,
    status: int,
    title: str,
    detail: str,
    type_: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response; `extra` members never override the standard ones."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    body.update((k, v) for k, v in extra.items() if k not in _RESERVED)
    body = _safe(json.loads(json.dumps(body, default=str)))
    return Response(
        content=json.dumps(body, ensure_ascii=False, default=str).encode("utf-8"),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


class ChainUnreachable(TryLater):
    """The chain node cannot be reached: the request was fine, try again later."""


#: Each kind of `RequestError` and the status and title it answers with; a subclass not listed
#: answers as its nearest listed base (a test checks that every one has a status).
PROBLEM_KINDS: dict[type[RequestError], tuple[int, str]] = {
    BadRequest: (400, "Bad request"),
    MalformedDelivery: (400, "Malformed webhook body"),
    Unauthorized: (401, "Unauthorized"),
    Forbidden: (403, "Forbidden"),
    NotFound: (404, "Not found"),
    Conflict: (409, "Conflict"),
    IdempotencyConflict: (409, "Idempotency-Key reused with a different request"),
    Gone: (410, "Gone"),
    CursorExpired: (410, "Cursor expired"),
    PayloadTooLarge: (413, "Payload too large"),
    Unprocessable: (422, "Unprocessable request"),
    UnsafeWebhookUrl: (422, "Webhook URL refused"),
    TooManyRequests: (429, "Too many requests"),
    TryLater: (503, "Service unavailable"),
    ChainUnreachable: (503, "Chain unavailable"),
}


def problem_kind(error: type[RequestError]) -> tuple[int, str]:
    """The status and title `error` answers with (its nearest kind in `PROBLEM_KINDS`)."""
    for kind in error.__mro__:
        if kind in PROBLEM_KINDS:
            return PROBLEM_KINDS[kind]
    raise LookupError(f"{error.__name__} is a RequestError with no status in PROBLEM_KINDS")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="crm-ledger"'
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    status, title = problem_kind(type(exc))
    return problem_response(
        status=status,
        title=title,
        detail=exc.detail,
        type_=problem_type(type(exc).__name__),
        instance=request.url.path,
        headers=headers or None,
        **exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    if detail == _UNPARSABLE:
        return _unparsable_body(request, exc.__cause__)
    if detail is None:
        detail = _HTTP_DETAILS.get(exc.status_code, phrase)
    # The same status gets the same type and title whether the router or a handler raised it.
    same = _SAME_KIND.get(exc.status_code)
    return problem_response(
        status=exc.status_code,
        title=problem_kind(same)[1] if same else phrase,
        detail=detail,
        type_=problem_type(same.__name__ if same else phrase),
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


_SAME_KIND: dict[int, type[RequestError]] = {
    problem_kind(kind)[0]: kind
    for kind in (NotFound, Conflict, Unauthorized, Forbidden, PayloadTooLarge, TooManyRequests)
}
# FastAPI's answer when the body cannot even be parsed (too deep, a number too long to read).
_UNPARSABLE = "There was an error parsing the body"
_HTTP_DETAILS = {
    404: "there is nothing at this URL; the API lives under /v1 (see /docs)",
    405: "this URL does not accept that method; the Allow header lists the ones it does",
}


def _unparsable_body(request: Request, cause: BaseException | None) -> Response:
    """A 422 like any other invalid body, for a body the JSON parser gave up on."""
    if isinstance(cause, UnicodeDecodeError):
        message = (
            f"is not valid {cause.encoding.upper()} (byte 0x{cause.object[cause.start]:02x} at "
            f"position {cause.start}): send JSON text encoded as UTF-8 (RFC 8259)"
        )
        kind = "body_encoding"
    else:
        message = "could not be parsed: it nests too deeply or holds a number too long to read"
        kind = "json_unparsable"
    detail = f"the request body {message}"
    return problem_response(
        status=422,
        title="Invalid request",
        detail=detail,
        type_=problem_type("validation error"),
        instance=request.url.path,
        errors=[{"location": "body", "field": None, "message": detail, "type": kind}],
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [_field_error(error) for error in exc.errors()]
    json_errors = [e for e in errors if e["type"] == "json_invalid"]
    if json_errors:
        detail = f"the request body is not valid JSON: {json_errors[0]['message']}"
    elif len(errors) == 1 and errors[0]["field"] is None:
        detail = errors[0]["message"]
    else:
        fields = ", ".join(dict.fromkeys(e["field"] or e["location"] for e in errors))
        noun = "field is" if len(errors) == 1 else "fields are"
        detail = f"{len(errors)} {noun} invalid: {fields}; see errors for what is wrong with each"
    return problem_response(
        status=422,
        title="Invalid request",
        detail=detail,
        type_=problem_type("validation error"),
        instance=request.url.path,
        errors=errors,
    )


def _field_error(error: Any) -> dict[str, Any]:
    loc: Sequence[str | int] = error.get("loc", ())
    location = str(loc[0]) if loc else "body"
    kind = str(error.get("type", "invalid"))
    if kind == "json_invalid":
        return {
            "location": "body",
            "field": None,
            "message": f"{error.get('ctx', {}).get('error', 'invalid JSON')} "
            f"(at character {loc[1] if len(loc) > 1 else 0})",
            "type": kind,
        }
    message = str(error.get("msg", "is invalid"))
    path = list(loc[1:])
    if location == "body" and not path:
        if kind == "missing":
            message = "a JSON object is required as the request body"
        elif isinstance(error.get("input"), bytes):
            message = "send the request body as a JSON object with Content-Type: application/json"
        else:
            message = "the request body must be a JSON object"
    field = _dotted(path)
    return {
        "location": location,
        "field": None if field is None else safe_text(field, limit=_FIELD_CHARS),
        "message": message,
        "type": kind,
    }


def _dotted(path: Sequence[str | int]) -> str | None:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


#: Seconds a client should wait before retrying after a 503 `database-unavailable`.
DATABASE_RETRY_SECONDS = 1
# SQLSTATE classes of a database that cannot work right now: 08 connection, 53 insufficient
# resources (disk full, out of memory), 57 operator intervention (shutdown, restart).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def _database_unavailable_reason(exc: DBAPIError) -> str | None:
    """Why the database cannot take requests now, or None if `exc` is not about that.

    The reason is written here, never taken from the driver's message: that can quote SQL
    parameters, i.e. personal data.
    """
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = str(exc.orig).lower()
    if (isinstance(sqlstate, str) and sqlstate.startswith("53")) or "disk is full" in message:
        return "its disk is full"
    if "locked" in message or "busy" in message:
        return "it is busy"
    if (
        exc.connection_invalidated
        or isinstance(exc, InterfaceError)
        or (isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES)
        or "connection" in message
        or "server closed" in message
        or "disk i/o error" in message
    ):
        return "it is restarting or cannot be reached"
    return None


async def _database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    reason = _database_unavailable_reason(exc)
    if reason is None:
        raise exc  # not an outage: a bug, for the last-resort 500
    return problem_response(
        status=503,
        title="Journal database unavailable",
        detail=(
            f"the journal database cannot take requests right now ({reason}); nothing was "
            f"recorded: send the same request again, with the same Idempotency-Key, in "
            f"{DATABASE_RETRY_SECONDS} s or later"
        ),
        type_=problem_type("database unavailable"),
        instance=request.url.path,
        headers={"Retry-After": str(DATABASE_RETRY_SECONDS)},
    )


def document_unavailable(app: FastAPI) -> None:
    """Add the 503 problem to the documented responses of every `/v1` operation of `app`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path, operations in schema.get("paths", {}).items():
                if not path.startswith("/v1/"):
                    continue
                for operation in operations.values():
                    operation["responses"].setdefault(
                        "503",
                        {
                            "description": "the journal database is unavailable: retry later",
                            "content": {
                                PROBLEM_MEDIA_TYPE: {
                                    "schema": {"$ref": "#/components/schemas/Problem"}
                                }
                            },
                        },
                    )
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def install_problem_handlers(app: FastAPI) -> None:
    """Render `RequestError`, HTTP errors, request validation errors and database outages as
    problem details."""
    app.add_exception_handler(RequestError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(KeyUnavailable, _key_unavailable)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(InterfaceError, _database_error)


async def _key_unavailable(request: Request, exc: Exception) -> Response:
    """Sealed personal data the configured master key cannot open: the operator's to fix."""
    log.error("personal data cannot be opened: %s", exc)
    return problem_response(
        status=503,
        title="Service unavailable",
        detail="personal data cannot be opened with the configured master key; the operator "
        "must configure the key this database was sealed with (see docs/privacy.md)",
        type_=problem_type("KeyUnavailable"),
        instance=request.url.path,
    )
