"""Who owns the Anvil on a state file: the pid file, the parent-death signal, orphans stopped.

Exports: `PID_FILE_NAME`, `parent_death_signal`, `claim`, `record_node`, `release`,
`stop_orphans`, `group_listens_on`.

A node belongs to the process that started it, even when that process is killed -9:

- On Linux the node is started with a parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGTERM)`):
  when its parent dies, however it dies, the kernel sends the node SIGTERM and Anvil saves its
  state and exits. Linux sends the signal when the *thread* that started the node ends, so start
  nodes from a thread that lives as long as the node should (the main thread, or the asyncio
  default executor, whose threads live until the loop closes).
- `anvil.pid` beside the state file names the owner (pid and start time) from before the node
  is spawned (`claim`) and the node's pid once it runs (`record_node`). `stop_orphans` runs
  before every start on that state file: an owner that still runs keeps its Anvil and the start
  is refused with a message naming it; otherwise every Anvil still serving the file (the one the
  pid file names, and on Linux any other whose command line names the file: one spawned just
  before its owner died, before the pid file could name it) is sent SIGTERM and waited for, so
  that it has finished writing its state before the next Anvil loads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crm_ledger.errors import ConfigError

__all__ = [
    "PID_FILE_NAME",
    "claim",
    "group_listens_on",
    "parent_death_signal",
    "record_node",
    "release",
    "stop_orphans",
]

log = logging.getLogger(__name__)

#: Beside the state file: who runs the Anvil that owns it (see the module docstring).
PID_FILE_NAME = "anvil.pid"
_PR_SET_PDEATHSIG = 1
_ORPHAN_STOP_SECONDS = 30.0
_TCP_LISTEN = "0A"


def parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `signum` to the child when its parent dies.

    Linux only (None elsewhere). The libc function is looked up here, before the fork, so the
    child runs nothing but the call itself and a check that the parent did not die already.
    """
    if not sys.platform.startswith("linux"):
        return None
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    prctl = ctypes.CDLL(library, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died between the fork and prctl: no signal will ever come.
            os._exit(1)

    return arm


def claim(pid_file: Path, *, port: int, state_path: Path) -> None:
    """Name this process as the owner of `state_path`'s Anvil, before the Anvil is spawned."""
    _write(pid_file, {"pid": None, "port": port, "state_path": str(state_path)})


def record_node(pid_file: Path, *, pid: int, port: int, state_path: Path) -> None:
    """Name the Anvil this process spawned on `state_path`."""
    document = {
        "pid": pid,
        "start_time": _process_start_time(pid),
        "port": port,
        "state_path": str(state_path),
    }
    _write(pid_file, document)


def release(pid_file: Path, pid: int) -> None:
    """Remove the pid file if it still names the node `pid` (it has ended)."""
    if _read(pid_file).get("pid") == pid:
        pid_file.unlink(missing_ok=True)


def stop_orphans(pid_file: Path, state_path: Path) -> None:
    """Stop every Anvil a gone owner left on `state_path` (see the module docstring).

    Raises `ConfigError` when the owner named by the pid file still runs.
    """
    document = _read(pid_file)
    owner = document.get("owner_pid")
    named = document.get("pid")
    owner_runs = owner != os.getpid() and _is_alive(owner, document.get("owner_start_time"))
    if owner_runs and (
        named is None or _is_live_anvil(named, document.get("start_time"), state_path)
    ):
        raise ConfigError(
            f"the Anvil on {state_path} (pid {named}, port {document.get('port')}) belongs "
            f"to the running process {owner}: stop that process first, or give this one "
            "another data directory, or point CRM_LEDGER_RPC_URL at that Anvil"
        )
    orphans = set(_anvils_serving(state_path))
    if isinstance(named, int) and _is_live_anvil(named, document.get("start_time"), state_path):
        orphans.add(named)
    elif isinstance(named, int) and _is_alive(named, document.get("start_time")):
        log.warning(
            "%s names pid %s, which is not an Anvil on %s: ignored", pid_file, named, state_path
        )
    for pid in sorted(orphans):
        _stop(pid, state_path)
    pid_file.unlink(missing_ok=True)


def group_listens_on(group: int, port: int) -> bool | None:
    """Whether a process of process group `group` listens on 127.0.0.1:`port` (Linux /proc),
    None where /proc cannot tell. A node that answers on its port may be another one that took
    the port while this one was starting (and is about to fail to bind it)."""
    try:
        table = Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return None
    listening = set()
    for line in table:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == _TCP_LISTEN:
            listening.add(f"socket:[{fields[9]}]")
    return any(listening & _open_sockets(pid) for pid in _group_members(group))


def _group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat_line = (entry / "stat").read_text(encoding="utf-8", errors="replace")
                if int(stat_line.rsplit(")", 1)[1].split()[2]) == group:
                    members.append(int(entry.name))
    return members


def _open_sockets(pid: int) -> set[str]:
    links = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return {link for link in links if link.startswith("socket:[")}


def _stop(pid: int, state_path: Path) -> None:
    """SIGTERM (Anvil saves its state), wait until it has exited; SIGKILL if it ignores it."""
    log.warning(
        "found the Anvil (pid %d) that a stopped process left running on %s: stopping it (it "
        "saves its state) and starting a new one",
        pid,
        state_path,
    )
    start_time = _process_start_time(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    if not _gone_within(pid, start_time, _ORPHAN_STOP_SECONDS):
        log.warning("the orphaned Anvil (pid %d) ignored SIGTERM: killing it", pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        if not _gone_within(pid, start_time, 5.0):
            raise ConfigError(f"cannot stop the orphaned Anvil (pid {pid}) on {state_path}")


def _write(pid_file: Path, document: dict[str, Any]) -> None:
    document = {
        **document,
        "owner_pid": os.getpid(),
        "owner_start_time": _process_start_time(os.getpid()),
    }
    partial = pid_file.with_name(f"{pid_file.name}.partial")
    partial.write_text(json.dumps(document), encoding="utf-8")
    partial.replace(pid_file)


def _read(pid_file: Path) -> dict[str, Any]:
    try:
        document = json.loads(pid_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _process_start_time(pid: int) -> int | None:
    """The start time of live process `pid` in clock ticks since boot (Linux /proc), or None
    when it does not run (a zombie that nobody reaped counts as ended)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        # The command name (field 2) may hold spaces and parentheses: split after it.
        fields = stat_line.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _is_alive(pid: object, start_time: object) -> bool:
    """Whether `pid` runs and is the process that started at `start_time` (not a reused pid)."""
    return isinstance(pid, int) and pid > 0 and _process_start_time(pid) == start_time


def _is_live_anvil(pid: object, start_time: object, state_path: Path) -> bool:
    return isinstance(pid, int) and _is_alive(pid, start_time) and _is_our_anvil(pid, state_path)


def _is_our_anvil(pid: int, state_path: Path) -> bool:
    """Whether `pid`'s command line is an `anvil` serving `state_path`."""
    args = _command_line(pid)
    named_anvil = any(Path(arg).name.startswith("anvil") for arg in args[:2])
    try:
        serves = args[args.index("--state") + 1] == str(state_path)
    except (ValueError, IndexError):
        serves = False
    return named_anvil and serves


def _anvils_serving(state_path: Path) -> list[int]:
    """Live processes (Linux /proc) whose command line is an Anvil on `state_path`."""
    found = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if _is_our_anvil(pid, state_path) and _process_start_time(pid) is not None:
                found.append(pid)
    return found


def _gone_within(pid: int, start_time: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _is_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
