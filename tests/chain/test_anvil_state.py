"""Anvil's state file across restarts: the genesis hash survives any number of them.

Anvil 1.7 keeps the genesis block each start builds beside the one it loads, so every restart's
dump holds one more block 0, and the next load picks one of them at random: the chain came back
with a new genesis hash ("chain reset") after a few restarts (issue 10, the kill -9 chaos row).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from crm_ledger.chain.anvil_state import block_hash, prepare_state_file
from crm_ledger.chain.node import LocalNode

pytestmark = pytest.mark.chain

StartAnvil = Callable[..., LocalNode]


def rpc(node: LocalNode, method: str, *params: Any) -> Any:
    """One JSON-RPC call; its result."""
    answer = httpx.post(
        node.rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
        timeout=10,
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


def genesis_hash(node: LocalNode) -> str:
    """The hash the node gives block 0."""
    return str(rpc(node, "eth_getBlockByNumber", "0x0", False)["hash"])


def blocks_at(state_path: Path, height: int) -> list[dict[str, Any]]:
    """The blocks the state file holds at `height`."""
    blocks = json.loads(state_path.read_text())["blocks"]
    return [b for b in blocks if int(b["header"]["number"], 16) == height]


def test_restarts_keep_the_genesis_hash(anvil_factory: StartAnvil, tmp_path: Path) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    first_genesis = genesis_hash(node)
    rpc(node, "anvil_mine", "0x2")
    for restart in range(6):
        node.stop()
        node = anvil_factory(port=node.port, state_path=state_path)
        assert genesis_hash(node) == first_genesis, f"genesis changed at restart {restart + 1}"
        block_one = rpc(node, "eth_getBlockByNumber", "0x1", False)
        assert block_one["parentHash"] == first_genesis
        rpc(node, "anvil_mine", "0x1")
    assert int(rpc(node, "eth_blockNumber"), 16) == 8


def test_a_restart_drops_the_genesis_blocks_of_earlier_starts(
    anvil_factory: StartAnvil, tmp_path: Path
) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    first_genesis = genesis_hash(node)
    rpc(node, "anvil_mine", "0x2")
    block_two = rpc(node, "eth_getBlockByNumber", "0x2", False)
    genesis_time = int(rpc(node, "eth_getBlockByNumber", "0x0", False)["timestamp"], 16)
    node.stop()
    # Anvil's own behaviour, which the fix works around: the restarted node builds a genesis
    # block of its own (stamped with the time it starts) and dumps it beside the loaded one. A
    # restart within the same second builds the very same block, so wait for the next second.
    while time.time() < genesis_time + 1.05:
        time.sleep(0.05)
    anvil_factory(port=node.port, state_path=state_path).stop()
    assert len(blocks_at(state_path, 0)) == 2

    prepare_state_file(state_path)

    [genesis] = blocks_at(state_path, 0)
    assert "0x" + block_hash(genesis["header"]).hex() == first_genesis
    [two] = blocks_at(state_path, 2)
    assert "0x" + block_hash(two["header"]).hex() == block_two["hash"]


def test_genesis_blocks_without_a_child_keep_the_first_start(tmp_path: Path) -> None:
    later = copy.deepcopy(GENESIS)
    later["header"]["timestamp"] = "0x6b15f700"
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps({"best_block_number": 0, "blocks": [later, GENESIS]}))

    prepare_state_file(state_path)

    assert blocks_at(state_path, 0) == [GENESIS]


def test_blocks_at_the_top_height_are_left_alone(tmp_path: Path) -> None:
    child = {"header": {**GENESIS["header"], "number": "0x1", "parentHash": "0x" + "ab" * 32}}
    sibling = copy.deepcopy(child)
    sibling["header"]["timestamp"] = "0x6b15f700"
    state_path = tmp_path / "state.json"
    document = {"best_block_number": 1, "blocks": [GENESIS, child, sibling]}
    state_path.write_text(json.dumps(document))

    prepare_state_file(state_path)

    assert json.loads(state_path.read_text()) == document


def test_a_genesis_nobody_names_is_left_alone(tmp_path: Path) -> None:
    later = copy.deepcopy(GENESIS)
    later["header"]["timestamp"] = "0x6b15f700"
    child = {"header": {**GENESIS["header"], "number": "0x1", "parentHash": "0x" + "cd" * 32}}
    state_path = tmp_path / "state.json"
    document = {"best_block_number": 1, "blocks": [GENESIS, later, child]}
    state_path.write_text(json.dumps(document))

    prepare_state_file(state_path)

    assert json.loads(state_path.read_text()) == document


def test_a_missing_state_file_stays_missing(tmp_path: Path) -> None:
    prepare_state_file(tmp_path / "state.json")

    assert not (tmp_path / "state.json").exists()


_EMPTY_ROOT = "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421"
#: A genesis block as Anvil 1.7 writes it into its state file.
GENESIS: dict[str, Any] = {
    "header": {
        "parentHash": "0x" + "00" * 32,
        "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
        "miner": "0x" + "00" * 20,
        "stateRoot": _EMPTY_ROOT,
        "transactionsRoot": _EMPTY_ROOT,
        "receiptsRoot": _EMPTY_ROOT,
        "logsBloom": "0x" + "00" * 256,
        "difficulty": "0x0",
        "number": "0x0",
        "gasLimit": "0x1c9c380",
        "gasUsed": "0x0",
        "timestamp": "0x6b15f60d",
        "extraData": "0x",
        "mixHash": "0x" + "00" * 32,
        "nonce": "0x0000000000000000",
        "baseFeePerGas": "0x3b9aca00",
        "withdrawalsRoot": _EMPTY_ROOT,
        "blobGasUsed": "0x0",
        "excessBlobGas": "0x0",
        "parentBeaconBlockRoot": "0x" + "00" * 32,
        "requestsHash": "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    },
    "transactions": [],
    "ommers": [],
    "withdrawals": [],
}
