"""Fixtures for the console's tests: its verifier module run in Node; the API tests' app,
client and keys; Chromium through Playwright; the live service on a real port and Anvil."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import create_engine, text

import crm_ledger.console
from crm_ledger.app import create_app
from crm_ledger.chain.node import LocalNode
from crm_ledger.journal.keys import Role, create_api_key
from tests.api.conftest import session_factory  # noqa: F401  (the app's; app, client, keys: tests/apps.py)
from tests.chain.conftest import anvil, free_port  # noqa: F401
from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import service_settings
from tests.waiting import wait_for

STATIC = Path(crm_ledger.console.__file__).parent / "static"
HARNESS = Path(__file__).parent / "verifier_harness.mjs"

RunJs = Callable[[list[dict[str, Any]]], list[Any]]


def run_js(cases: list[dict[str, Any]]) -> list[Any]:
    """Each case through `static/verifier.js` in Node; one result per case, in order."""
    node = shutil.which("node")
    assert node is not None, "Node.js 20+ is needed (it is part of `make install`)"
    done = subprocess.run(
        [node, str(HARNESS)],
        input=json.dumps({"module": str(STATIC / "verifier.js"), "cases": cases}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[Any] = json.loads(done.stdout)
    assert len(results) == len(cases)
    return results


@pytest.fixture
def js() -> RunJs:
    """Run cases through the JavaScript verifier (see `run_js`)."""
    return run_js


# Browser tests -----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(__file__).parents[2] / "hardhat-local" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "console"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (its own browser download cannot work here).

    Module-scoped: while Playwright's sync API runs, it keeps an event loop running in this
    thread, so no asyncio test (pytest-asyncio) may run before it has stopped.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs it (scripts/ensure_system_packages.sh)"
        )
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield found
        found.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab in a fresh context (its own sessionStorage); fails on uncaught page errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, errors


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical accessibility violations axe-core finds on the page as it is."""
    # evaluate() runs through the DevTools protocol, which the page's CSP does not govern.
    page.evaluate(AXE.read_text(encoding="utf-8"))
    results: dict[str, Any] = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


class LiveService:
    """The whole service on a real port (uvicorn in a thread), for a browser to reach."""

    def __init__(self, service_app: FastAPI) -> None:
        self.app = service_app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(service_app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveService:
        self.thread.start()
        wait_for(lambda: self.server.started, 30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def key(self, role: Role) -> str:
        """A new API key of `role`."""
        with self.app.state.runtime.session_factory.begin() as session:
            return create_api_key(session, role=role, label=f"console {role}")


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """A fresh database URL like the `database_url` fixture's, for a longer-lived fixture."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'ledger.sqlite'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    anvil: LocalNode,  # noqa: F811
) -> Iterator[LiveService]:
    """The service with its anchorer, loyalty worker and indexer on the session's Anvil, on
    SQLite then PostgreSQL; one per test module (the browser journeys share it, each with
    customers of its own), so the journeys do not pay for a service start each."""
    directory = tmp_path_factory.mktemp(f"live-{request.param}")
    with fresh_database(request.param, directory) as database_url:
        configured = service_settings(
            directory,
            database_url,
            anvil.rpc_url,
            loyalty_poll_seconds=0.05,
            indexer_poll_seconds=0.05,
        )
        with LiveService(create_app(configured)) as service:
            wait_for(
                lambda: httpx.get(service.url + "/readyz").json()["chain"]["state"] == "running",
                60,
            )
            yield service
