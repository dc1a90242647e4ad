"""The sync resources are generated from the async ones (scripts/unasync_client.py): the
committed modules must be what the script makes now, so the two never drift."""

from __future__ import annotations

import subprocess
import sys

from tests.docs.blocks import ROOT


def test_the_sync_resources_are_generated_from_the_async_ones() -> None:
    checked = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync_client.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
