"""Client fixtures: `crm-ledger serve` as a real process on SQLite and on PostgreSQL, against the
session's Anvil, with a key per role; a fault-injecting HTTP proxy in front of it; and a webhook
receiver on 127.0.0.1 (the service lets subscriptions target it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from crm_ledger.chain.node import LocalNode
from tests.chain.conftest import anvil, free_port  # noqa: F401  (session node fixture)
from tests.client.proxy import FaultProxy
from tests.conftest import POSTGRES_URL

BIN = Path(sys.executable).parent
ROLES = ("recorder", "auditor", "marketing", "admin")


@dataclass
class LiveService:
    """A running `crm-ledger serve`: where it listens, its chain, its environment, its keys."""

    url: str
    rpc_url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> str:
        """Run `crm-ledger ARGS` on the service's journal; its stdout."""
        return subprocess.run(
            [str(BIN / "crm-ledger"), *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Until /readyz says the anchorer runs; fails if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"crm-ledger serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).json()["chain"]["state"] == "running":
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the service at {url} was not ready within {timeout} s")


def start_service(
    data_dir: Path, rpc_url: str, database_url: str | None, roles: tuple[str, ...] = ROLES
) -> LiveService:
    """`crm-ledger serve` on a free port with fast batches, and a key for each of `roles`."""
    port = free_port()
    env = {
        **os.environ,
        "CRM_LEDGER_DATA_DIR": str(data_dir),
        "CRM_LEDGER_RPC_URL": rpc_url,
        "CRM_LEDGER_BATCH_MAX_AGE_SECONDS": "0.05",
        "CRM_LEDGER_ANCHOR_POLL_SECONDS": "0.02",
        "CRM_LEDGER_PORT": str(port),
        # Webhook subscriptions may aim at the tests' receiver on 127.0.0.1.
        "CRM_LEDGER_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    }
    if database_url is not None:
        env["CRM_LEDGER_DATABASE_URL"] = database_url
    for name in ("CRM_LEDGER_PRIVATE_KEY", "CRM_LEDGER_KEYSTORE_PATH", "CRM_LEDGER_MNEMONIC"):
        env.pop(name, None)
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(BIN / "crm-ledger"), "serve", "--log-level", "warning"], env=env
    )
    service = LiveService(f"http://127.0.0.1:{port}", rpc_url, data_dir, env, process)
    try:
        wait_ready(service.url, process)
        for role in roles:
            service.keys[role] = service.cli("keys", "create", "--role", role)
    except BaseException:
        stop_service(service)
        raise
    return service


def stop_service(service: LiveService) -> None:
    """Terminate the service and wait for it."""
    service.process.terminate()
    try:
        service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database of its own, dropped on exit.

    A database, not a schema: the anchorer's singleton is an advisory lock, and those are
    per database, so a service here never stands by behind another test's service.
    """
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """The service as a process, on SQLite then on PostgreSQL (a database of its own)."""
    node: LocalNode = request.getfixturevalue("anvil")
    data_dir = tmp_path_factory.mktemp("service")
    with contextlib.ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url = stack.enter_context(postgres_database())
        service = start_service(data_dir, node.rpc_url, database_url)
        try:
            yield service
        finally:
            stop_service(service)


@pytest.fixture
def proxy(live: LiveService) -> Iterator[FaultProxy]:
    """A fault-injecting proxy on 127.0.0.1 in front of the live service."""
    with FaultProxy(live.url) as running:
        yield running


@dataclass(frozen=True)
class Delivered:
    """One webhook the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that answers 204 to every POST and keeps what it got."""

    def __init__(self) -> None:
        self.received: list[Delivered] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(Delivered(self.path, dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tests read `received`."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def on(self, path: str) -> list[Delivered]:
        """What `path` received, in order."""
        return [item for item in list(self.received) if item.path == path]

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 for the module's tests (each uses its own path)."""
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
