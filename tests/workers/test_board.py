"""workers.board: the states the processes of `serve` publish, merged for `/readyz`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crm_ledger.workers.board import STALE_SECONDS, STATUS_DIR_ENV, StatusBoard, merge


def entry(state: str, **more: object) -> dict[str, object]:
    return {"state": state, "message": "", **more}


def test_a_published_status_is_read_by_the_other_processes_not_by_its_own(tmp_path: Path) -> None:
    mine = StatusBoard(tmp_path)
    mine.publish({"webhooks": entry("running")})
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from crm_ledger.workers.board import StatusBoard; "
            "StatusBoard(Path(sys.argv[1])).publish({'anchorer': {'state': 'running'}}); "
            "sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not mine.others() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mine.others() == [(child.pid, {"anchorer": {"state": "running"}})]
        assert StatusBoard(tmp_path, pid=child.pid).others() == [
            (os.getpid(), {"webhooks": entry("running")})
        ]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    # The child is gone: its file no longer counts, though it is still there.
    assert (tmp_path / f"{child.pid}.json").exists()
    assert mine.others() == []


def test_a_file_not_rewritten_for_a_while_counts_for_nothing(tmp_path: Path) -> None:
    parent = StatusBoard(tmp_path, pid=os.getppid())  # a live process that is not this one
    parent.publish({"anchorer": entry("running")})
    mine = StatusBoard(tmp_path)
    assert [pid for pid, _ in mine.others()] == [os.getppid()]
    old = time.time() - STALE_SECONDS - 1
    os.utime(tmp_path / f"{os.getppid()}.json", (old, old))
    assert mine.others() == []


def test_withdraw_removes_the_file_and_stray_files_are_ignored(tmp_path: Path) -> None:
    mine = StatusBoard(tmp_path)
    mine.publish({"anchorer": entry("running")})
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / f"{os.getppid()}.json").write_text("not json")
    assert StatusBoard(tmp_path, pid=1).others() == [(os.getpid(), {"anchorer": entry("running")})]
    mine.withdraw()
    mine.withdraw()  # twice is fine
    assert StatusBoard(tmp_path, pid=1).others() == []


def test_publishing_into_a_directory_that_is_gone_is_not_an_error(tmp_path: Path) -> None:
    board = StatusBoard(tmp_path / "gone")
    board.publish({"anchorer": entry("running")})
    assert board.others() == []


def test_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATUS_DIR_ENV, raising=False)
    assert StatusBoard.from_environment() is None
    monkeypatch.setenv(STATUS_DIR_ENV, str(tmp_path))
    board = StatusBoard.from_environment()
    assert board is not None and board.directory == tmp_path and board.pid == os.getpid()


def test_merge_shows_the_process_doing_the_work() -> None:
    api = {"anchorer": entry("standby"), "webhooks": entry("running", in_flight=2)}
    chain = {"anchorer": entry("running", last_batch_id=7), "indexer": entry("backing_off")}
    merged = merge([(10, api), (20, chain)])
    assert merged == {
        "anchorer": entry("running", last_batch_id=7, pid=20),
        "webhooks": entry("running", in_flight=2, pid=10),
        "indexer": entry("backing_off", pid=20),
    }


@pytest.mark.parametrize(
    ("states", "shown"),
    [
        (["standby", "halted"], "halted"),  # the holder halted: an operator must act
        (["halted", "backing_off"], "backing_off"),  # another copy took over
        (["stopped", "starting"], "starting"),
        (["standby", "standby"], "standby"),
        (["stopped", "standby"], "standby"),
    ],
)
def test_merge_ranks_the_states(states: list[str], shown: str) -> None:
    merged = merge([(pid, {"loyalty": entry(state)}) for pid, state in enumerate(states, 1)])
    assert merged["loyalty"]["state"] == shown
    assert merged["loyalty"]["pid"] == states.index(shown) + 1


def test_the_published_file_is_json_with_every_entry(tmp_path: Path) -> None:
    StatusBoard(tmp_path, pid=123).publish({"anchorer": entry("halted", since=1.5)})
    assert json.loads((tmp_path / "123.json").read_text()) == {
        "anchorer": {"state": "halted", "message": "", "since": 1.5}
    }
    assert not list(tmp_path.glob("*.tmp"))
