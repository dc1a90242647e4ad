"""The embedded Anvil belongs to the process that started it (issue 10, finding 3).

A parent killed -9 takes its Anvil with it (parent-death signal); an Anvil left behind anyway
(by an owner without that signal) is found through `anvil.pid` and stopped by the next start on
the same state file, which keeps the chain; an Anvil whose owner still runs is left alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_ledger.chain.node import PID_FILE_NAME, LocalNode, start_anvil
from crm_ledger.errors import ConfigError
from tests.chain.conftest import free_port
from tests.chain.test_node import ledger_state_block
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.chain,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux"),
]

# A parent that starts an Anvil, reports its pid, then exits at once or waits to be killed.
_PARENT = """
import os, sys, time
from pathlib import Path
from crm_ledger.chain.node import start_anvil
node = start_anvil(port=int(sys.argv[1]), state_path=Path(sys.argv[2]),
                   die_with_parent=sys.argv[3] == "1")
print(node.pid, flush=True)
if sys.argv[4] == "exit":
    os._exit(0)
time.sleep(600)
"""


def start_parent(
    port: int, state_path: Path, *, die_with_parent: bool, then: str
) -> tuple[subprocess.Popen[str], int]:
    """A Python process that starts an Anvil; returns it and the Anvil's pid."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PARENT,
            str(port),
            str(state_path),
            str(int(die_with_parent)),
            then,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    parent.stdout.close()
    assert line.strip(), f"the parent started no Anvil (exit code {parent.wait()})"
    return parent, int(line)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped counts as ended)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until_gone(pid: int, seconds: float, why: str = "") -> None:
    """Fail the test unless `pid` ends within `seconds`."""
    wait_for(lambda: not alive(pid), seconds, what=why or f"process {pid} to end")


def mine(rpc_url: str, blocks: int) -> None:
    """Mine `blocks` empty blocks."""
    import httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": [hex(blocks)]}
    assert "error" not in httpx.post(rpc_url, json=body, timeout=10).json()


@pytest.fixture
def stoppers() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end of the test if they still run."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_anvil_with_a_state_file_writes_and_removes_its_pid_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"

    with start_anvil(port=free_port(), state_path=state) as node:
        document = json.loads((tmp_path / PID_FILE_NAME).read_text())
        assert (document["pid"], document["owner_pid"]) == (node.pid, os.getpid())
        assert document["state_path"] == str(state.resolve())

    assert not (tmp_path / PID_FILE_NAME).exists()


def test_an_anvil_dies_with_its_parent_killed_9(tmp_path: Path, stoppers: list[int]) -> None:
    parent, anvil_pid = start_parent(
        free_port(), tmp_path / "state.json", die_with_parent=True, then="wait"
    )
    stoppers.append(anvil_pid)
    assert alive(anvil_pid)

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    wait_until_gone(anvil_pid, 30)


def test_an_orphaned_anvil_is_stopped_by_the_next_start_and_the_chain_is_kept(
    tmp_path: Path, stoppers: list[int]
) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    parent, orphan = start_parent(port, state, die_with_parent=False, then="exit")
    stoppers.append(orphan)
    parent.wait()
    assert alive(orphan), "the orphan should outlive its parent without the death signal"
    mine(f"http://127.0.0.1:{port}", 7)

    node: LocalNode = start_anvil(port=port, state_path=state)
    try:
        assert not alive(orphan)
        assert node.pid != orphan
        # The orphan saved its state on SIGTERM: the new Anvil has every block.
        assert asyncio.run(ledger_state_block(node.rpc_url)) == 7
        assert json.loads((tmp_path / PID_FILE_NAME).read_text())["pid"] == node.pid
    finally:
        node.stop()


def test_an_anvil_whose_owner_runs_is_left_alone(tmp_path: Path, stoppers: list[int]) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    parent, anvil_pid = start_parent(port, state, die_with_parent=True, then="wait")
    stoppers.append(anvil_pid)
    try:
        with pytest.raises(ConfigError, match=f"belongs to the running process {parent.pid}"):
            start_anvil(port=free_port(), state_path=state)

        assert alive(anvil_pid)
    finally:
        parent.terminate()
        parent.wait()


def test_a_pid_file_naming_another_program_is_ignored(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        stat_line = Path(f"/proc/{bystander.pid}/stat").read_text()
        (tmp_path / PID_FILE_NAME).write_text(
            json.dumps(
                {
                    "pid": bystander.pid,
                    "start_time": int(stat_line.rsplit(")", 1)[1].split()[19]),
                    "owner_pid": 999_999_999,
                    "owner_start_time": 1,
                }
            )
        )

        with start_anvil(port=free_port(), state_path=tmp_path / "state.json"):
            assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_an_anvil_the_pid_file_does_not_name_is_stopped_too(
    tmp_path: Path, stoppers: list[int]
) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    parent, orphan = start_parent(port, state, die_with_parent=False, then="exit")
    stoppers.append(orphan)
    parent.wait()
    mine(f"http://127.0.0.1:{port}", 5)
    # As if its owner had been killed between spawning it and naming it in the pid file.
    (tmp_path / PID_FILE_NAME).unlink()

    node: LocalNode = start_anvil(port=port, state_path=state)
    try:
        assert not alive(orphan)
        assert asyncio.run(ledger_state_block(node.rpc_url)) == 5
    finally:
        node.stop()


def test_an_owner_still_starting_its_anvil_keeps_the_state_file(tmp_path: Path) -> None:
    owner = subprocess.Popen(["sleep", "60"])
    try:
        stat_line = Path(f"/proc/{owner.pid}/stat").read_text()
        (tmp_path / PID_FILE_NAME).write_text(
            json.dumps(
                {
                    "pid": None,
                    "owner_pid": owner.pid,
                    "owner_start_time": int(stat_line.rsplit(")", 1)[1].split()[19]),
                }
            )
        )

        with pytest.raises(ConfigError, match=f"belongs to the running process {owner.pid}"):
            start_anvil(port=free_port(), state_path=tmp_path / "state.json")
    finally:
        owner.kill()
        owner.wait()
