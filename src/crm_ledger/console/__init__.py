"""The web console at `/`: a static shell and small ES modules that call the same REST API.

Exports: `install_console`, `CONTENT_SECURITY_POLICY`, `STATIC_DIR`.

No build step and nothing from a CDN: `static/` is served as it is in the repository. The
console's pages (and only they, so `/docs` keeps its own scripts) carry a strict Content
Security Policy: scripts and styles from this origin only, no inline script or style
attribute, no framing. `connect-src` allows any http(s) URL because the receipt verifier
reads the chain from a JSON-RPC URL the auditor may change.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self' http: https:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Always revalidate (ETag): a new version of the console is picked up at the next load.
    (b"cache-control", b"no-cache"),
]


class _SecurityHeaders:
    """Adds the console's headers to every answer of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in _HEADERS}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message["headers"] = kept + _HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _shell() -> Response:
    response = FileResponse(STATIC_DIR / "index.html", media_type="text/html")
    for name, value in _HEADERS:
        response.headers[name.decode()] = value.decode()
    return response


def install_console(app: FastAPI) -> None:
    """Serve the console: the shell at `/` and its files under `/console/`."""
    app.mount("/console", _SecurityHeaders(StaticFiles(directory=STATIC_DIR)), name="console")

    @app.get("/", include_in_schema=False)
    def console_shell() -> Response:
        return _shell()
