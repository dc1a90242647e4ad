"""Anvil as a child process: start, stop, restart, SIGKILL, torn state files, taken ports."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.node import LocalNode, find_anvil_binary, start_anvil
from crm_ledger.chain.signer import dev_account
from crm_ledger.errors import ChainUnavailable, ConfigError
from tests.waiting import wait_for

from .conftest import RPC_TIMEOUT_SECONDS, deployed_chain, free_port, make_settings, some_root

pytestmark = pytest.mark.chain

StartAnvil = Callable[..., LocalNode]


async def anchor_batches(rpc_url: str, address: str | None, batches: int) -> LedgerChain:
    """Anchor `batches` batches of 2 records (deploying a ledger first if `address` is None)."""
    w3 = make_async_web3(rpc_url, RPC_TIMEOUT_SECONDS)
    try:
        if address is None:
            chain = await deployed_chain(w3, dev_account(0))
        else:
            chain = LedgerChain(w3, dev_account(0), address)
        for _ in range(batches):
            first_seq = await chain.next_seq()
            tx_hash = await chain.send_anchor(first_seq, 2, some_root(f"seq {first_seq}"))
            assert await chain.wait_for_receipt(tx_hash, timeout=10) is not None
        return chain
    finally:
        await w3.provider.disconnect()


async def ledger_state(rpc_url: str, address: str) -> tuple[int, bytes, int, bytes, int]:
    """(nextSeq, head, batch events, genesis hash, block number) of the ledger at `address`."""
    w3 = make_async_web3(rpc_url, RPC_TIMEOUT_SECONDS)
    try:
        chain = LedgerChain(w3, dev_account(0), address)
        return (
            await chain.next_seq(),
            await chain.head(),
            len(await chain.batch_events(0)),
            await chain.genesis_hash(),
            await chain.block_number(),
        )
    finally:
        await w3.provider.disconnect()


def test_native_binary_is_preferred_over_the_npm_wrapper() -> None:
    binary = find_anvil_binary()

    assert binary.name == "anvil"
    assert "@foundry-rs" in binary.parts, binary


def test_explicit_anvil_binary_is_used_or_refused(tmp_path: Path) -> None:
    native = find_anvil_binary()
    assert find_anvil_binary(make_settings(tmp_path, anvil_bin=native)) == native
    assert find_anvil_binary(native) == native

    with pytest.raises(ConfigError, match="CRM_LEDGER_ANVIL_BIN"):
        find_anvil_binary(tmp_path / "no-such-anvil")


def test_stop_then_start_keeps_the_chain(anvil_factory: StartAnvil, tmp_path: Path) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    chain = asyncio.run(anchor_batches(node.rpc_url, None, batches=3))
    assert chain.address is not None
    before = asyncio.run(ledger_state(node.rpc_url, chain.address))

    node.stop()
    assert not node.is_running()
    assert json.loads(state_path.read_text())["best_block_number"]
    restarted = anvil_factory(port=node.port, state_path=state_path)

    after = asyncio.run(ledger_state(restarted.rpc_url, chain.address))
    assert after == before
    assert after[0] == 6
    asyncio.run(anchor_batches(restarted.rpc_url, chain.address, batches=1))
    assert asyncio.run(ledger_state(restarted.rpc_url, chain.address))[0] == 8


def wait_until_saved(state_path: Path, block_number: int, timeout: float = 30.0) -> None:
    """Wait until the state file holds block `block_number` (the node's saver wrote it)."""

    def saved_block() -> int:
        try:
            saved = json.loads(state_path.read_bytes())["best_block_number"]
            return int(str(saved), 0)
        except (OSError, ValueError, KeyError):
            return -1

    wait_for(
        saved_block,
        timeout,
        until=lambda saved: saved >= block_number,
        what=f"{state_path} to hold block {block_number}",
        interval=0.1,
    )


def test_kill_loses_at_most_the_blocks_since_the_last_save(
    anvil_factory: StartAnvil, tmp_path: Path
) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    chain = asyncio.run(anchor_batches(node.rpc_url, None, batches=2))
    assert chain.address is not None
    saved = asyncio.run(ledger_state(node.rpc_url, chain.address))
    wait_until_saved(state_path, saved[4])
    asyncio.run(anchor_batches(node.rpc_url, chain.address, batches=1))

    node.kill()
    restarted = anvil_factory(port=node.port, state_path=state_path)

    next_seq, _head, events, genesis, _block = asyncio.run(
        ledger_state(restarted.rpc_url, chain.address)
    )
    # The batch sent right before the kill may or may not have been written: a rollback at most.
    assert next_seq in (saved[0], saved[0] + 2)
    assert events in (saved[2], saved[2] + 1)
    assert genesis == saved[3]
    asyncio.run(anchor_batches(restarted.rpc_url, chain.address, batches=1))


def test_torn_state_file_falls_back_to_the_last_good_copy(
    anvil_factory: StartAnvil, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    node = anvil_factory(state_path=state_path)
    chain = asyncio.run(anchor_batches(node.rpc_url, None, batches=1))
    assert chain.address is not None
    node.stop()
    anvil_factory(port=node.port, state_path=state_path).stop()  # loads it: the last good copy
    saved = state_path.read_bytes()
    state_path.write_bytes(saved[: len(saved) // 2])  # as a SIGKILL mid-write leaves it

    restarted = anvil_factory(port=node.port, state_path=state_path)

    assert asyncio.run(ledger_state(restarted.rpc_url, chain.address))[0] == 2
    assert "unreadable" in caplog.text
    assert [p for p in state_path.parent.iterdir() if ".unreadable-" in p.name]


def test_torn_state_file_without_a_good_copy_starts_an_empty_chain(
    anvil_factory: StartAnvil, tmp_path: Path
) -> None:
    state_path = tmp_path / "anvil" / "state.json"
    state_path.parent.mkdir()
    state_path.write_text('{"block": {"number": "0x5"')

    node = anvil_factory(state_path=state_path)

    assert asyncio.run(ledger_state_block(node.rpc_url)) == 0


async def ledger_state_block(rpc_url: str) -> int:
    """The node's latest block number."""
    w3 = make_async_web3(rpc_url, RPC_TIMEOUT_SECONDS)
    try:
        return await w3.eth.block_number
    finally:
        await w3.provider.disconnect()


def test_a_taken_port_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: the port is already in use"):
            start_anvil(port=port, state_path=tmp_path / "state.json")


def test_a_node_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "anvil"
    broken.write_text("#!/bin/sh\necho 'error: invalid value for --state' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)

    with pytest.raises(ChainUnavailable, match="exited with code 3") as caught:
        start_anvil(port=free_port(), state_path=tmp_path / "state.json", binary=broken)

    assert "invalid value for --state" in str(caught.value)


def test_a_node_that_never_answers_times_out_with_its_log(tmp_path: Path) -> None:
    silent = tmp_path / "anvil"
    silent.write_text("#!/bin/sh\necho 'still thinking'\nexec sleep 60\n")
    silent.chmod(silent.stat().st_mode | stat.S_IXUSR)

    started = time.monotonic()
    with pytest.raises(ChainUnavailable, match=r"did not answer .* within 1 s") as caught:
        start_anvil(port=free_port(), state_path=None, binary=silent, startup_timeout=1.0)

    assert "still thinking" in str(caught.value)
    assert time.monotonic() - started < 10


def test_another_node_answering_on_the_port_is_not_taken_for_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = tmp_path / "anvil"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(silent.stat().st_mode | stat.S_IXUSR)
    with start_anvil(port=free_port(), state_path=None) as other:
        # The other node took the port after this start checked that it was free.
        monkeypatch.setattr("crm_ledger.chain.node._refuse_taken_port", lambda *_: None)

        with pytest.raises(ChainUnavailable, match="another process answers there"):
            start_anvil(port=other.port, state_path=None, binary=silent, startup_timeout=1.0)


def test_kill_takes_the_whole_process_group(tmp_path: Path) -> None:
    wrapper = tmp_path / "anvil"
    # A wrapper like npm's: the real node is a child process.
    wrapper.write_text(f'#!/bin/sh\n"{find_anvil_binary()}" "$@" &\nwait\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    node = start_anvil(port=free_port(), state_path=None, binary=wrapper)

    node.kill()

    wait_for(lambda: group_gone(node.pid), 5, what=f"process group {node.pid} to end")
    with pytest.raises(ChainUnavailable):
        asyncio.run(ledger_state_block_checked(node.rpc_url))


def group_gone(group: int) -> bool:
    """Whether process group `group` is empty (orphans are reaped by init)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


async def ledger_state_block_checked(rpc_url: str) -> int:
    """The latest block number through `LedgerChain`, whose errors are `ChainUnavailable`."""
    w3 = make_async_web3(rpc_url, 1.0)
    try:
        return await LedgerChain(w3, dev_account(0), None).block_number()
    finally:
        await w3.provider.disconnect()
