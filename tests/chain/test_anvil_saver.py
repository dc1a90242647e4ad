"""The StateSaver: Anvil's state saved when the chain changed, atomically, spaced by its cost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crm_ledger.chain.anvil_saver import StateSaver
from crm_ledger.chain.node import LocalNode
from tests.waiting import wait_for

from .test_node import anchor_batches, ledger_state, wait_until_saved

pytestmark = pytest.mark.chain

StartAnvil = Callable[..., LocalNode]


def test_an_idle_chain_is_not_rewritten(anvil_factory: StartAnvil, tmp_path: Path) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    assert node.saver is not None
    wait_until_saved(state_path, 0)
    wait_for(lambda: node.saver.saves, 10, what="the saver's first save")
    saves, written = node.saver.saves, state_path.stat().st_mtime_ns

    time.sleep(2.5 * node.saver.min_interval)

    assert node.saver.saves == saves == 1
    assert state_path.stat().st_mtime_ns == written
    chain = asyncio.run(anchor_batches(node.rpc_url, None, batches=1))
    assert chain.address is not None
    wait_until_saved(state_path, asyncio.run(ledger_state(node.rpc_url, chain.address))[4])
    assert node.saver.saves > saves


def test_a_save_is_the_state_anvil_restarts_from(anvil_factory: StartAnvil, tmp_path: Path) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    chain = asyncio.run(anchor_batches(node.rpc_url, None, batches=3))
    assert chain.address is not None
    assert node.saver is not None
    node.saver.stop()
    # Not via the thread: a save made here, and nothing else writes the file afterwards.
    saver = StateSaver(node.rpc_url, state_path)
    assert saver.save_if_changed()
    assert not saver.save_if_changed()  # nothing new since
    saver.stop()  # closes its HTTP client (never started: no thread to join)
    before = asyncio.run(ledger_state(node.rpc_url, chain.address))
    assert saver.last_bytes == state_path.stat().st_size
    assert not state_path.with_name(f"{state_path.name}.partial").exists()

    node.kill()
    restarted = anvil_factory(port=node.port, state_path=state_path)

    assert asyncio.run(ledger_state(restarted.rpc_url, chain.address)) == before
    assert json.loads(state_path.read_bytes())["blocks"]


def test_saves_are_spaced_by_their_cost(tmp_path: Path) -> None:
    saver = StateSaver("http://127.0.0.1:1", tmp_path / "state.json", min_interval=1.0, duty=0.05)

    assert saver.pause_after(saved=False) == 1.0
    saver.last_seconds = 0.01
    assert saver.pause_after(saved=True) == 1.0
    saver.last_seconds = 3.0
    assert saver.pause_after(saved=True) == pytest.approx(60.0)
    assert saver.pause_after(saved=False) == 1.0


def test_a_saver_on_a_dead_node_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saver = StateSaver("http://127.0.0.1:1", tmp_path / "state.json", min_interval=0.05).start()
    wait_for(lambda: "could not save" in caplog.text, 10, what="the saver's warning")
    saver.stop()

    assert "could not save Anvil's state" in caplog.text
    assert saver.saves == 0
    assert not (tmp_path / "state.json").exists()
