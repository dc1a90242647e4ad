"""RFC 9457 problem details: every error the API answers has this shape.

Exports: `Problem`, `problem_response`, `install_problem_handlers`, `PROBLEM_MEDIA_TYPE`.

    {"type": "urn:crm-ledger:problem:not-found", "title": "Not found", "status": 404,
     "detail": "no customer with id '…'", "instance": "/v1/customers/…", ...extras}

`type` is a URN per kind of problem; `detail` says what to do about this occurrence. Validation
problems add `errors`: one entry per bad field, `{"location", "field", "message", "type"}`, where
`field` is a path such as `lines[0].quantity`. Request values are never echoed back: they may be
personal data, and they may be large. What a message does quote of the request (a field path, a
JSON key, an id) passes through `safe_text` (`journal.schemas`, where validators quote input
too) when the document is rendered: lone surrogates, control and format characters are escaped
and long text is cut, so no input can break the rendering (a 500) or a terminal reading a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from crm_ledger.errors import (
    ApiError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
)
from crm_ledger.journal.schemas import MAX_QUOTED_CHARS, safe_text

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


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="crm-ledger"'
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    return problem_response(
        status=exc.status,
        title=exc.title,
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
    same = _API_ERRORS.get(exc.status_code)
    return problem_response(
        status=exc.status_code,
        title=same.title if same else phrase,
        detail=detail,
        type_=problem_type(same.__name__ if same else phrase),
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


_API_ERRORS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (NotFound, Conflict, Unauthorized, Forbidden, PayloadTooLarge, TooManyRequests)
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


def install_problem_handlers(app: FastAPI) -> None:
    """Render `ApiError`, HTTP errors and request validation errors as problem details."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
