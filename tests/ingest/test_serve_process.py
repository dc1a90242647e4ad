"""`crm-ledger serve` runs the shop-webhook mapper in a child process of its own
(`serving.WorkerProcess`): deliveries are mapped there, a child killed is started again and
maps what arrived meanwhile, `serve`'s `/metrics` counts what its children mapped, SIGTERM to
`serve` stops both (exit 0), and a child whose `serve` was killed stops by itself."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from crm_ledger.db.models import IngestDelivery, Record
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.journal.privacy import KeyRing, MasterKey, attach_keyring
from tests.ingest.conftest import TEST_MASTER_KEY
from tests.ingest.shops import SHOPIFY_ORDER_ID, SHOPIFY_SECRET, body_of, shopify_headers
from tests.ingest.shops import shopify_order as order_document
from tests.processes import children
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")

# `serve` and its child import the whole service before they answer: slow on a loaded machine.
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    base: str
    process: subprocess.Popen[bytes]
    database_url: str
    admin: dict[str, str]


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Served]:
    """`crm-ledger serve` with its defaults (the mapper in a child process), on a chain that
    cannot be reached (nothing here needs one)."""
    engine = make_engine(database_url)
    attach_keyring(engine, KeyRing(MasterKey(base64.b64decode(TEST_MASTER_KEY))))
    upgrade_database(engine)
    with make_session_factory(engine).begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="serve process test")
    engine.dispose()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_LEDGER_")}
    env.update(
        CRM_LEDGER_DATA_DIR=str(tmp_path / "data"),
        CRM_LEDGER_DATABASE_URL=database_url,
        CRM_LEDGER_MASTER_KEY=TEST_MASTER_KEY,
        CRM_LEDGER_RPC_URL=f"http://127.0.0.1:{_free_port()}",
    )
    command = [str(Path(sys.executable).parent / "crm-ledger"), "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--log-level", "warning"], env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), STARTUP_SECONDS, what="serve answering /healthz")
        yield Served(base, process, database_url, {"Authorization": f"Bearer {key}"})
    finally:
        # Whatever is left of the process group (a test that failed half-way).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _mappers(pid: int) -> list[int]:
    """The pids of `pid`'s children that run the ingest worker."""
    return children(pid, "worker ingest")


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _deliver(served: Served, source: dict[str, str], n: int) -> None:
    document = order_document(id=SHOPIFY_ORDER_ID + n, name=f"#{1001 + n}")
    body = body_of(document)
    url = served.base + source["webhook_url"][source["webhook_url"].index("/v1/webhooks/") :]
    answer = httpx.post(url, content=body, headers=shopify_headers(body, "orders/create"))
    assert answer.status_code == 200, answer.text


def _statuses(database_url: str) -> tuple[list[str], int]:
    """The deliveries' statuses, and how many order records there are."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            statuses = list(
                session.scalars(select(IngestDelivery.status).order_by(IngestDelivery.pk))
            )
            records = len(session.scalars(select(Record.pk).where(Record.kind == 2)).all())
    finally:
        engine.dispose()
    return statuses, records


def _mapper_metrics(served: Served) -> tuple[float, set[str]]:
    """From `serve`'s /metrics: deliveries the mappers handled, and the pids whose mapper runs."""
    text = httpx.get(f"{served.base}/metrics", timeout=10).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    handled = sum(
        s.value
        for s in samples
        if s.name == "crm_ledger_worker_items_total" and s.labels["worker"] == "ingest"
    )
    running = {
        s.labels["pid"]
        for s in samples
        if s.name == "crm_ledger_worker_state"
        and s.labels["worker"] == "ingest"
        and s.labels["state"] == "running"
        and s.value == 1
    }
    return handled, running


def _make_source(served: Served) -> dict[str, str]:
    answer = httpx.post(
        f"{served.base}/v1/sources",
        json={"platform": "shopify", "name": "Lovelace Prints", "secret": SHOPIFY_SECRET},
        headers=served.admin,
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    source: dict[str, str] = answer.json()
    return source


def test_the_mapper_child_killed_is_started_again_and_sigterm_stops_both(
    served: Served,
) -> None:
    source = _make_source(served)
    [first] = wait_for(lambda: _mappers(served.process.pid), STARTUP_SECONDS, what="a mapper")
    _deliver(served, source, 0)
    wait_for(lambda: _statuses(served.database_url) == (["mapped"], 1), STARTUP_SECONDS)
    # Counted in the child's metrics just after its commit; serve's /metrics shows it.
    wait_for(lambda: _mapper_metrics(served), 30, until=lambda found: found == (1.0, {str(first)}))

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not _alive(first), 30, what="the killed mapper gone")
    _deliver(served, source, 1)  # accepted while no mapper runs
    [second] = wait_for(
        lambda: [pid for pid in _mappers(served.process.pid) if pid != first],
        STARTUP_SECONDS,
        what="the mapper started again",
    )
    wait_for(
        lambda: _statuses(served.database_url) == (["mapped", "mapped"], 2),
        STARTUP_SECONDS,
        what=lambda: _statuses(served.database_url),
    )
    # The mapping happened in the children; serve's /metrics counts both deliveries (the
    # killed child's too) and shows the running child's state, not the killed one's.
    wait_for(
        lambda: _mapper_metrics(served),
        30,
        until=lambda found: found == (2.0, {str(second)}),
        what="both deliveries counted, the second mapper running",
    )

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0
    assert not _alive(second)


def test_a_mapper_child_stops_by_itself_when_serve_is_killed(served: Served) -> None:
    [mapper] = wait_for(lambda: _mappers(served.process.pid), STARTUP_SECONDS, what="a mapper")
    served.process.send_signal(signal.SIGKILL)
    served.process.wait()
    wait_for(lambda: not _alive(mapper), 60, what="the orphaned mapper stopped")
