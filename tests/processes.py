"""Finding the child processes a `crm-ledger serve` under test started (Linux: /proc)."""

from __future__ import annotations

from pathlib import Path


def child_commands(pid: int) -> dict[int, str]:
    """The command lines of `pid`'s live (not zombie) children, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status and "\nState:\tZ" not in status:
            found[int(entry.name)] = cmdline
    return found


def children(pid: int, command: str) -> list[int]:
    """The pids of `pid`'s live children whose command line holds `command`."""
    return [child for child, cmdline in child_commands(pid).items() if command in cmdline]
