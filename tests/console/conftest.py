"""Fixtures for the console's tests: its verifier module run in Node; the API tests' app,
client and keys."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crm_ledger.console
from tests.api.conftest import app, client, keys, session_factory, settings  # noqa: F401

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
