"""After a restart, /readyz shows the journal's last anchored batch at once."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from crm_ledger.client import Client
from tests.client.conftest import BIN, LiveService, stop_service, wait_ready

pytestmark = pytest.mark.chain


def test_readyz_names_the_last_batch_right_after_a_restart(live: LiveService) -> None:
    with Client(live.url, api_key=live.keys["recorder"]) as recorder:
        who = recorder.customers.create(name="Restart", email="restart@example.com")
        record = recorder.interactions.create(
            customer_id=who.id, type="t", channel="c", occurred_at="2026-11-25T10:00:00Z"
        )
        recorder.records.receipt(record.id, wait=True)
        batch_id = recorder.records.get(record.id).batch_id
    before = httpx.get(f"{live.url}/readyz").json()["chain"]["last_batch_id"]
    assert before is not None and before >= (batch_id or 0)

    stop_service(live)
    live.process = subprocess.Popen(
        [str(BIN / "crm-ledger"), "serve", "--log-level", "warning"], env=live.env
    )
    wait_ready(live.url, live.process)
    assert httpx.get(f"{live.url}/readyz").json()["chain"]["last_batch_id"] == before
