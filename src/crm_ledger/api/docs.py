"""The OpenAPI explorer at /docs, served from package files (no CDN), so it works offline.

Exports: `install`, `swagger_ui`.

Swagger UI's files come from the `swagger-ui-bundle` package and are served under
/docs/static; the page FastAPI renders points at them instead of a CDN.
"""

from __future__ import annotations

import swagger_ui_bundle  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_PATH = "/docs/static"


def install(app: FastAPI) -> None:
    """Serve Swagger UI at /docs from the package's files (the app has `docs_url=None`)."""
    app.mount(STATIC_PATH, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs")
    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)


def swagger_ui(request: Request) -> HTMLResponse:
    """The explorer page of the app that got the request.

    Not a closure over the app: FastAPI keeps every endpoint function in a module-level cache
    (`fastapi.dependencies.models`, 4,096 entries), and a closure there would keep its whole app
    alive, routes, engine and all, for as long as the process runs.
    """
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} API",
        swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_PATH}/favicon-32x32.png",
    )
