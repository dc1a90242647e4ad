"""docs/client.md's examples: type-checked with `mypy --strict` and run against a live service,
each with a key of the role it names in its first line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import LiveService, WebhookReceiver
from tests.docs.blocks import ROOT, blocks

pytestmark = pytest.mark.chain

ROLE_OF = {
    "recorder": "recorder",
    "auditor": "auditor",
    "marketing": "marketing",
    "feed": "admin",
    "integrator": "admin",
    "async": "admin",
}


def _examples(tmp_path: Path) -> list[tuple[str, Path]]:
    found = []
    for number, block in enumerate(blocks(ROOT / "docs" / "client.md", "python")):
        first = block.text.splitlines()[0]
        assert first.startswith("# ") and ":" in first, first
        kind = first[2:].split(":", 1)[0]
        path = tmp_path / f"example_{number}_{kind}.py"
        path.write_text(block.text)
        found.append((kind, path))
    return found


def test_the_client_examples_pass_mypy_strict(tmp_path: Path) -> None:
    files = [str(path) for _, path in _examples(tmp_path)]
    assert len(files) == len(ROLE_OF)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            *files,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(ROOT / "src")},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_client_examples_run_against_the_service(
    live: LiveService, webhook_receiver: WebhookReceiver, tmp_path: Path
) -> None:
    for kind, path in _examples(tmp_path):
        done = subprocess.run(
            [sys.executable, str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={
                **os.environ,
                "CRM_LEDGER_URL": live.url,
                "CRM_LEDGER_API_KEY": live.keys[ROLE_OF[kind]],
                "CRM_LEDGER_RPC_URL": live.rpc_url,
                "WEBHOOK_URL": f"{webhook_receiver.base_url}/hooks/docs",
            },
        )
        assert done.returncode == 0, (kind, done.stdout, done.stderr)
        if kind == "recorder":
            assert "refused: ['email']" in done.stdout
            assert "root_on_chain  ok" in done.stdout
        if kind == "auditor":
            assert (tmp_path / "bundle.jsonl").read_text().startswith('{"format":"crm-ledger/b')
        if kind == "marketing":
            assert "issued to 1 customers" in done.stdout
        if kind == "feed":
            assert (tmp_path / "feed.cursor").read_text()
        if kind == "integrator":
            assert (tmp_path / "webhook.secret").read_text().startswith("whsec_")
            assert f"send to {live.url}/v1/webhooks/shopify/" in done.stdout
        if kind == "async":
            assert "replayed" in done.stdout
