"""Service logging: plain text for people, or one ECS JSON object per line for Splunk and ELK.

Exports: `LogFormat`, `configure_logging`, `request_context`, `current_request_id`,
`sane_request_id`.

`configure_logging(level=..., log_format=LogFormat.JSON)` puts `ecs_logging.StdlibFormatter` (the
Elastic Common Schema formatter Elastic maintains) on the root handler: every record becomes
`{"@timestamp", "log.level", "message", "ecs.version", "log": {"logger", "origin"}, ...}`,
and the `extra={...}` a call passes with dotted ECS names (`http.request.method`, `url.path`,
`http.response.status_code`, `event.duration` in nanoseconds, `user.id`, `user.roles`) is
nested under them. While a request is answered, every record also carries its
`http.request.id` (also returned as `X-Request-ID`), so a worker thread's or a handler's lines
join the access line.

What may be logged: ids (customer, record, key, request), roles, counts, states, durations,
route templates. Never an API key, a private key or mnemonic, the master key, or a personal
value (name, e-mail, phone, free-form details); `tests/e2e/test_json_logs.py` plants some and
fails on any line that carries one.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import ecs_logging

__all__ = [
    "LogFormat",
    "configure_logging",
    "current_request_id",
    "request_context",
    "sane_request_id",
]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "crm_ledger_request_id", default=None
)
#: An incoming X-Request-ID is kept when it looks like an id a proxy or client made.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(enum.StrEnum):
    """How log lines look: `text` for a terminal, `json` (ECS) for a log platform."""

    TEXT = "text"
    JSON = "json"


class _RequestIdFilter(logging.Filter):
    """Adds the current request's id to every record logged while it is answered."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _request_id.get()
        if request_id is not None and not hasattr(record, "http.request.id"):
            setattr(record, "http.request.id", request_id)
        return True


def configure_logging(*, level: str, log_format: LogFormat | str = LogFormat.TEXT) -> None:
    """Log to stderr at `level` in `log_format`, replacing any handler set before."""
    handler = logging.StreamHandler(sys.stderr)
    if LogFormat(log_format) is LogFormat.JSON:
        # log.original would repeat the message unformatted; uvicorn's color_message too.
        handler.setFormatter(
            ecs_logging.StdlibFormatter(exclude_fields=["log.original", "color_message"])
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # web3's provider logs full RPC URLs (API keys included) at INFO.
    logging.getLogger("web3").setLevel(max(logging.WARNING, root.level))
    # uvicorn's own loggers go through the root handler: one format for every line.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def sane_request_id(value: str | None) -> str | None:
    """`value` when it is a usable request id (1-128 of A-Z a-z 0-9 . _ : -), else None."""
    if value is not None and _SANE_REQUEST_ID.match(value):
        return value
    return None


def current_request_id() -> str | None:
    """The id of the request being answered in this context, if any."""
    return _request_id.get()


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Tag every record logged inside with `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)
