"""Where the processes `serve` starts publish their workers' states, so `/readyz` shows them all.

Exports: `StatusBoard`, `merge`, `STATUS_DIR_ENV`, `PUBLISH_SECONDS`, `STALE_SECONDS`.

Under `serve` the workers are spread over processes: the chain workers in a child process of
their own, the ingest mapper in another, the integrations' workers in whichever API process
holds their locks (`--workers N`). A request to `/readyz` reaches one API process, which knows
only its own supervisor. So each process `serve` starts writes its supervisor's status to
`<pid>.json` in one directory (`STATUS_DIR_ENV`, which `serve` sets: `status/` in the data
directory) every `PUBLISH_SECONDS`, replacing the file at once (`os.replace`), and removes it
when it stops; the process answering `/readyz` reads the others' files and merges them with
its own (`merge`): for each worker, the entry of the process that does the work (running,
backing off...) rather than one that stands by or was never asked to run it. A file whose
process is gone, or that was not rewritten for `STALE_SECONDS` (a process frozen or killed),
counts for nothing. Every entry says which process it is from (`pid`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The directory the processes publish in (set by `serve` for the processes it starts).
STATUS_DIR_ENV = "CRM_LEDGER_STATUS_DIR"
#: How often a process rewrites its file.
PUBLISH_SECONDS = 0.5
#: A file not rewritten for this long is a dead or frozen process's: ignored.
STALE_SECONDS = 15.0

# Which of two processes' entries for one worker `/readyz` shows: the higher ranked. The process
# doing the work first; then a halted one (an operator must act) before copies standing by.
_RANK = {"running": 6, "backing_off": 5, "starting": 4, "halted": 3, "standby": 2, "stopped": 1}

Status = dict[str, dict[str, Any]]


class StatusBoard:
    """One process's view of the directory; see the module docstring."""

    def __init__(self, directory: Path, *, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self._path = directory / f"{self.pid}.json"

    @classmethod
    def from_environment(cls) -> StatusBoard | None:
        """The board `serve` set up for this process (`STATUS_DIR_ENV`), if any."""
        directory = os.environ.get(STATUS_DIR_ENV)
        return cls(Path(directory)) if directory else None

    def publish(self, status: Status) -> None:
        """Replace this process's file with `status` (worker name -> its `/readyz` entry)."""
        temporary = self._path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(status, default=str))
            os.replace(temporary, self._path)
        except OSError as exc:  # the directory went with a `serve` that is stopping
            log.debug("cannot publish the workers' status: %s", exc)

    def withdraw(self) -> None:
        """Remove this process's file (it stops)."""
        with contextlib.suppress(OSError):
            self._path.unlink()

    def others(self) -> list[tuple[int, Status]]:
        """The statuses the other live processes published, by pid."""
        found = []
        now = time.time()
        try:
            paths = list(self.directory.glob("*.json"))
        except OSError:
            return []
        for path in paths:
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == self.pid or not _alive(pid):
                continue
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    continue
                status = json.loads(path.read_text())
            except (OSError, ValueError):  # gone meanwhile; a torn file cannot be (os.replace)
                continue
            if isinstance(status, dict):
                found.append((pid, status))
        return found


def merge(statuses: Iterable[tuple[int, Status]]) -> Status:
    """One entry per worker from several processes' statuses: the highest ranked state (see
    `_RANK`), the first such in `statuses` on a tie; each entry with its process's `pid`."""
    merged: Status = {}
    for pid, status in statuses:
        for name, entry in status.items():
            if not isinstance(entry, dict):
                continue
            current = merged.get(name)
            if current is None or _rank(entry) > _rank(current):
                merged[name] = {**entry, "pid": pid}
    return merged


def _rank(entry: dict[str, Any]) -> int:
    return _RANK.get(str(entry.get("state")), 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True
