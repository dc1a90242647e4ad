"""The README quickstart and docs/journeys.md, run command by command against a live service on
a fresh data directory (SQLite and PostgreSQL), so the docs cannot drift from the code."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_ledger.chain.node import LocalNode
from tests.chain.conftest import anvil  # noqa: F401  (session node fixture)
from tests.client.conftest import LiveService, postgres_database, start_service, stop_service
from tests.docs.blocks import ROOT, blocks

pytestmark = pytest.mark.chain


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveService, Path]]:
    """A service on `./data` of an empty working directory that has the project's `.venv`."""
    node: LocalNode = request.getfixturevalue("anvil")
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    with contextlib.ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url = stack.enter_context(postgres_database())
        service = start_service(workdir / "data", node.rpc_url, database_url, roles=())
        try:
            yield service, workdir
        finally:
            stop_service(service)


def _script(service: LiveService, pages: list[Path]) -> str:
    parts = ["set -euo pipefail", "set -x"]
    for page in pages:
        for block in blocks(page, "sh"):
            if not block.skip:
                parts.append(block.text)
    port = service.url.rsplit(":", 1)[1]
    rpc_port = service.rpc_url.rsplit(":", 1)[1]
    return (
        "\n".join(parts)
        .replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        .replace("127.0.0.1:8545", f"127.0.0.1:{rpc_port}")
    )


def test_the_readme_quickstart_and_the_journeys_run_as_written(
    fresh: tuple[LiveService, Path],
) -> None:
    service, workdir = fresh
    script = _script(service, [ROOT / "README.md", ROOT / "docs" / "journeys.md"])
    assert script.count("keys create") == 4  # the quickstart's and each journey's
    env = {k: v for k, v in os.environ.items() if k != "CRM_LEDGER_DATA_DIR"}
    if "CRM_LEDGER_DATABASE_URL" in service.env:
        env["CRM_LEDGER_DATABASE_URL"] = service.env["CRM_LEDGER_DATABASE_URL"]
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    said = done.stdout + done.stderr
    assert "\nvalid\n" in done.stdout  # the client's verdict in the README
    assert "OK: every check held." in said  # crm-ledger verify on the bundle
    assert "in the journal at" in done.stderr and "There was no journal" not in done.stderr


def test_docs_link_nothing_outside_the_repository() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), (page.name, target)
            assert resolved.exists(), (page.name, target)
