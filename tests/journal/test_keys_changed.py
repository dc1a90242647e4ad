"""The keys-changed stamp (`journal.keys.KeysChangedMark`): what `crm-ledger keys revoke` or
`rotate` moves in one process shows at once in an API process that maps the file, with no
system call per read, and every change moves it, however close together."""

from __future__ import annotations

import mmap
import subprocess
import sys
from pathlib import Path

import pytest

from crm_ledger.journal.keys import KEYS_CHANGED_FILE, KeysChangedMark, mark_keys_changed


def _mark_in_another_process(data_dir: Path, times: int = 1) -> None:
    code = (
        "import sys; from pathlib import Path; from crm_ledger.journal.keys import "
        "mark_keys_changed\nfor _ in range(int(sys.argv[2])): mark_keys_changed(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir), str(times)], check=True)


def test_a_change_marked_by_another_process_shows_at_once(tmp_path: Path) -> None:
    mark = KeysChangedMark(tmp_path)
    assert mark.stamp() == 0
    _mark_in_another_process(tmp_path)
    first = mark.stamp()
    assert first > 0
    _mark_in_another_process(tmp_path, times=3)
    assert mark.stamp() >= first + 3


def test_every_change_moves_the_stamp_even_within_one_clock_tick(tmp_path: Path) -> None:
    mark = KeysChangedMark(tmp_path)
    seen = []
    for _ in range(50):
        mark_keys_changed(tmp_path)
        seen.append(mark.stamp())
    assert seen == sorted(set(seen))


def test_a_marker_left_empty_by_an_older_version_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / KEYS_CHANGED_FILE).touch()  # what versions that compared mtimes left
    mark = KeysChangedMark(tmp_path)
    assert mark.stamp() == 0
    mark_keys_changed(tmp_path)
    assert mark.stamp() > 0


def test_where_the_file_cannot_be_mapped_the_stamp_is_read_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError("no mmap here")

    monkeypatch.setattr(mmap, "mmap", refuse)
    mark = KeysChangedMark(tmp_path)
    before = mark.stamp()
    _mark_in_another_process(tmp_path)
    assert mark.stamp() > before
