"""Pure ASGI middleware: request metrics, a last-resort error handler, the body size limit.

Exports: `MetricsMiddleware`, `UnexpectedErrorMiddleware`, `BodyLimitMiddleware`, `BodyTooLarge`,
`RequestLogMiddleware`.

Pure ASGI rather than `BaseHTTPMiddleware`: no extra task per request, and the body limit can
count the bytes as they stream in instead of buffering them first.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_ledger import metrics
from crm_ledger.api.problems import problem_kind, problem_response, problem_type
from crm_ledger.errors import PayloadTooLarge
from crm_ledger.journal.schemas import safe_text
from crm_ledger.observability.logs import request_context, sane_request_id

log = logging.getLogger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodyTooLarge(HTTPException):
    """The request body is over the limit for its path."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"the request body is over the limit of {limit} bytes for this endpoint; "
            "send less per request",
        )


class BodyLimitMiddleware:
    """413 for a body over the limit: by Content-Length up front, else by counting the stream.

    The check happens when the application first reads the body, after routing, so the 413 is
    rendered by the application's own HTTP error handler (a problem document) and counted under
    its route in the metrics. `path_limits` keys are paths or route templates
    ("/v1/campaigns/{campaign_id}/awards").
    """

    def __init__(self, app: ASGIApp, *, limit: int, path_limits: Mapping[str, int]) -> None:
        self.app = app
        self.limit = limit
        self.path_limits = dict(path_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            # Read here, after routing: the route's template is known by now.
            template = getattr(scope.get("route"), "path", None)
            limit = self.path_limits.get(
                scope["path"], self.path_limits.get(template or "", self.limit)
            )
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UnexpectedErrorMiddleware:
    """Anything that escapes the application becomes a 500 problem, logged, no traceback sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BodyTooLarge as exc:
            # Raised where no handler could render it (e.g. a body read by middleware).
            if started:
                raise
            response = problem_response(
                status=413,
                title=problem_kind(PayloadTooLarge)[1],
                detail=str(exc.detail),
                type_=problem_type(PayloadTooLarge.__name__),
                instance=scope["path"],
            )
            await response(scope, receive, send)
        except Exception:
            error_id = uuid.uuid4().hex
            # The route, not the raw path: a path a client typed may hold personal data (and
            # the method is the client's too: escaped, so it cannot forge log lines).
            log.exception(
                "unexpected error %s answering %s %s",
                error_id,
                safe_text(scope["method"], limit=20),
                _loggable_path(scope),
            )
            if started:
                raise
            response = problem_response(
                status=500,
                title="Internal Server Error",
                detail="the service failed to answer this request; the error was logged under "
                f"error_id {error_id}. Retrying with the same Idempotency-Key is safe.",
                type_=problem_type("Internal Server Error"),
                instance=scope["path"],
                error_id=error_id,
            )
            await response(scope, receive, send)


class MetricsMiddleware:
    """Count requests and time them by method and route template (never the raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            counter, histogram = _series(method, template, status)
            counter.inc()
            histogram.observe(time.perf_counter() - start)


@functools.lru_cache(maxsize=4096)
def _series(method: str, template: str, status: int) -> tuple[Any, Any]:
    """The request counter's and the duration histogram's series for one method, route
    template and status: `labels()` takes a lock and builds a key on every call, the
    dictionary lookup here none. Bounded: templates and methods are finite, statuses too."""
    return (
        metrics.http_requests_total.labels(method, template, str(status)),
        metrics.http_request_duration_seconds.labels(method, template),
    )


# Request ids and access logs (issue 12, part 5) -------------------------------------------------

_access_log = logging.getLogger("crm_ledger.access")
_ID_PARAMETER = re.compile(
    r"^(?:[0-9]{1,20}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


class RequestLogMiddleware:
    """Give each request an id (a sane incoming `X-Request-ID`, else a new one), return it in
    `X-Request-ID`, and log one access line with ECS fields when the answer is sent.

    The line names the route with only its id parameters filled in (UUIDs, integers): never a
    query string or a path segment a client typed that could be a person's name or e-mail. The
    calling key's id and role are `user.id` and `user.roles` (set by the auth dependency in the
    request state); the key itself never.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = sane_request_id(value.decode("latin-1"))
                break
        # Not uuid4: a request id needs to be unique, not unguessable, and os.urandom is a
        # system call on every request (which also hands the interpreter lock to another
        # thread, such as the group committer's, in the middle of the request).
        request_id = incoming or f"{random.getrandbits(128):032x}"
        start = time.perf_counter_ns()
        status = 500

        async def identified_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        with request_context(request_id):
            try:
                await self.app(scope, receive, identified_send)
            finally:
                self._log(scope, request_id, status, time.perf_counter_ns() - start)

    @staticmethod
    def _log(scope: Scope, request_id: str, status: int, duration_ns: int) -> None:
        level = logging.ERROR if status >= 500 else logging.INFO
        if not _access_log.isEnabledFor(level):
            return
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        path = _loggable_path(scope)
        fields: dict[str, object] = {
            "http.request.id": request_id,
            "http.request.method": method,
            "url.path": path,
            "http.response.status_code": status,
            "event.duration": duration_ns,
            "event.kind": "event",
            "event.category": ["web"],
            "event.outcome": "success" if status < 400 else "failure",
        }
        principal = scope.get("state", {}).get("api_key")
        if principal is not None:
            fields["user.id"] = principal.id
            fields["user.roles"] = [str(principal.role)]
        _access_log.log(level, "%s %s %d", method, path, status, extra=fields)


def _loggable_path(scope: Scope) -> str:
    """The route template with its id parameters filled in; `unmatched` without a route."""
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return "unmatched"
    params = scope.get("path_params", {})
    for name, value in params.items():
        if isinstance(value, int) or (isinstance(value, str) and _ID_PARAMETER.match(value)):
            template = template.replace("{" + name + "}", str(value))
    return str(template)
