"""Local EVM nodes run as child processes: Anvil (the embedded default) and the Hardhat node.

Exports: `LocalNode`, `find_anvil_binary`, `find_hardhat_project`, `start_anvil`,
`start_hardhat`, `PID_FILE_NAME`.

Anvil keeps its whole chain in memory. With `--state <file>` it loads the file at start and
writes it back on a clean exit (SIGTERM); while it runs, `chain.anvil_saver` saves it whenever
the chain changed, spaced so that saving takes at most 5 % of the time (Anvil's own
`--state-interval` rewrites the whole file every interval, which a large chain cannot keep up
with), so a SIGKILL or a power cut loses at most the blocks since the last save. Before each
start `chain.anvil_state`
makes the file fit to load (a torn write replaced by the last good copy, the stray genesis
blocks of earlier starts dropped so that the genesis hash never changes), and
`chain.ownership` stops any Anvil a killed owner left on it, waiting until it has written its
state and exited.

The npm package's `node_modules/.bin/anvil` is a Node.js wrapper that spawns the native binary;
`find_anvil_binary` prefers the native binary so that a signal reaches Anvil itself. Every node
runs in a process group of its own and `kill()` signals the whole group, so no orphan keeps the
port; on Linux it also dies with the process that started it (`chain.ownership`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from crm_ledger.chain import ownership
from crm_ledger.chain.anvil_saver import StateSaver
from crm_ledger.chain.anvil_state import keep_last_good, prepare_state_file
from crm_ledger.chain.ownership import PID_FILE_NAME
from crm_ledger.config import DEV_CHAIN_ID, DEV_MNEMONIC, Settings
from crm_ledger.errors import ChainUnavailable, ConfigError

__all__ = [
    "PID_FILE_NAME",
    "LocalNode",
    "find_anvil_binary",
    "find_hardhat_project",
    "start_anvil",
    "start_hardhat",
]

log = logging.getLogger(__name__)

#: Past block states a long-running Anvil keeps (in memory only): enough for a reorg this deep.
ANVIL_HISTORY_STATES = 64
HOST = "127.0.0.1"
HARDHAT_PROJECT = "hardhat-local"
_NPM_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_LOG_TAIL_LINES = 20


@dataclass
class LocalNode:
    """A running local node; stop it with `stop()` (clean) or `kill()` (SIGKILL).

    Use it as a context manager to stop it on exit::

        with start_anvil(port=8545, state_path=data_dir / "anvil" / "state.json") as node:
            w3 = make_async_web3(node.rpc_url, timeout=10)
    """

    kind: str
    rpc_url: str
    port: int
    log_path: Path
    state_path: Path | None
    process: subprocess.Popen[bytes] = field(repr=False)
    _log_file: IO[bytes] = field(repr=False)
    _ended: bool = field(default=False, repr=False)
    pid_file: Path | None = field(default=None, repr=False)
    #: Saves the state file while the node runs (a node with a state file only).
    saver: StateSaver | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """Process id of the node (the leader of its process group)."""
        return self.process.pid

    def is_running(self) -> bool:
        """Whether the node process is still alive."""
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then wait for the node to exit; Anvil writes its state file on the way out.

        A node that does not exit within `timeout` seconds is killed.
        """
        if self._ended:
            return
        if self.saver is not None:
            # Before the SIGTERM: Anvil's own save on exit is the last word on the file.
            self.saver.stop()
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
            # A wrapper (npm's `.bin/anvil`) exits before the node it forwarded the signal to.
            _wait_for_group_exit(self.process.pid, deadline=time.monotonic() + timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s on port %d did not stop within %.0f s: killing it",
                self.kind,
                self.port,
                timeout,
            )
        self.kill()

    def kill(self) -> None:
        """SIGKILL the node's whole process group, as a crash or `kill -9` would."""
        if self._ended:
            # The group id may belong to another process group by now.
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.saver is not None:
            # A save in progress fails at once against the dead node, or finishes its rename.
            self.saver.stop()
        self._log_file.close()
        self._ended = True
        if self.pid_file is not None:
            ownership.release(self.pid_file, self.pid)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the node's log file."""
        return _tail(self.log_path, lines)

    def __enter__(self) -> LocalNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def find_anvil_binary(settings_or_path: Settings | Path | str | None = None) -> Path:
    """The Anvil executable: the explicit setting, else npm's copy in `hardhat-local/`, else PATH.

    Within `hardhat-local/node_modules` the native binary of the platform package is preferred
    over the `.bin/anvil` Node.js wrapper, so that signals reach Anvil itself.
    """
    explicit = (
        settings_or_path.anvil_bin if isinstance(settings_or_path, Settings) else settings_or_path
    )
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ConfigError(
            f"the Anvil binary {str(path)!r} (CRM_LEDGER_ANVIL_BIN) does not exist or is not "
            "executable; fix the setting or unset it to use the one installed by `make install`"
        )
    for project in _hardhat_project_candidates():
        modules = project / "node_modules"
        for candidate in (_native_anvil(modules), modules / ".bin" / "anvil"):
            if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    on_path = shutil.which("anvil")
    if on_path is not None:
        return Path(on_path)
    raise ConfigError(
        "no Anvil binary found: run `make install` (or `npm --prefix hardhat-local ci`) to "
        "install the pinned one, or set CRM_LEDGER_ANVIL_BIN, or CRM_LEDGER_RPC_URL to use a "
        "node that is already running"
    )


def find_hardhat_project() -> Path:
    """The `hardhat-local/` directory with its npm dependencies installed."""
    for project in _hardhat_project_candidates():
        if (project / "node_modules" / ".bin" / "hardhat").exists():
            return project
    raise ConfigError(
        "no Hardhat installation found: run `make install` (or `npm --prefix hardhat-local ci`)"
    )


def start_anvil(
    *,
    port: int,
    state_path: Path | None,
    binary: Path | None = None,
    log_path: Path | None = None,
    startup_timeout: float = 30.0,
    die_with_parent: bool = True,
) -> LocalNode:
    """Start Anvil on 127.0.0.1:`port` (chain id 31337, automine) and wait until it answers.

    With `state_path` the chain is loaded from and saved to that file (by a `StateSaver` while
    it runs, see `chain.anvil_saver`, and on a clean stop), the log goes next to it as `anvil.log`
    and the pid file as `anvil.pid`; an Anvil an earlier owner left running on that state file
    is stopped first and the file is made fit to load (`chain.anvil_state`). Without it the
    chain lives in memory only. `die_with_parent=False` leaves out the parent-death signal
    (tests make orphans with it). Raises `ConfigError` when the port is taken or the state
    file's Anvil belongs to a running process, `ChainUnavailable` (with the end of the log)
    when Anvil does not come up.
    """
    executable = binary if binary is not None else find_anvil_binary()
    pid_file = None
    if state_path is not None:
        state_path = state_path.resolve()
        state_path.parent.mkdir(parents=True, exist_ok=True)
        pid_file = state_path.with_name(PID_FILE_NAME)
        ownership.stop_orphans(pid_file, state_path)
    _refuse_taken_port(port, "Anvil")
    if state_path is not None and pid_file is not None:
        prepare_state_file(state_path)
        ownership.claim(pid_file, port=port, state_path=state_path)
    if log_path is None:
        log_dir = state_path.parent if state_path is not None else _scratch_dir("anvil")
        log_path = log_dir / "anvil.log"
    try:
        node = _spawn(
            "anvil",
            _anvil_command(executable, port, state_path),
            port=port,
            log_path=log_path,
            state_path=state_path,
            die_with_parent=die_with_parent,
        )
    except ConfigError:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
        raise
    if pid_file is not None and state_path is not None:
        ownership.record_node(pid_file, pid=node.pid, port=port, state_path=state_path)
        node.pid_file = pid_file
    _wait_until_ready(node, startup_timeout)
    if state_path is not None:
        # Anvil just loaded this file: it is the copy to fall back on after a torn write.
        keep_last_good(state_path)
        node.saver = StateSaver(node.rpc_url, state_path).start()
    return node


def _anvil_command(executable: Path, port: int, state_path: Path | None) -> list[str]:
    command = [
        str(executable),
        "--host",
        HOST,
        "--port",
        str(port),
        "--chain-id",
        str(DEV_CHAIN_ID),
        "--mnemonic",
        DEV_MNEMONIC,
        # Anvil logs every RPC request otherwise: megabytes an hour under the anchorer's polling.
        # Start-up failures still reach the log.
        "--quiet",
    ]
    if state_path is not None:
        # No --state-interval: the StateSaver saves while Anvil runs, Anvil itself on exit.
        command += ["--state", str(state_path)]
        # Without it Anvil also writes the whole state of every block it mines to a cache under
        # ~/.foundry/anvil/tmp (up to 3,600 of them, each as large as the state file), and keeps
        # hundreds in memory: gigabytes within days. The service reads only the latest block.
        command += ["--prune-history", str(ANVIL_HISTORY_STATES)]
    return command


def start_hardhat(
    *,
    port: int,
    project: Path | None = None,
    log_path: Path | None = None,
    startup_timeout: float = 60.0,
) -> LocalNode:
    """Start a Hardhat node (chain id 31337, dev mnemonic, in memory) on 127.0.0.1:`port`."""
    project = project if project is not None else find_hardhat_project()
    _refuse_taken_port(port, "the Hardhat node")
    if log_path is None:
        log_path = _scratch_dir("hardhat") / "hardhat.log"
    command = [
        str(project / "node_modules" / ".bin" / "hardhat"),
        "node",
        "--hostname",
        HOST,
        "--port",
        str(port),
    ]
    node = _spawn(
        "hardhat",
        command,
        port=port,
        log_path=log_path,
        state_path=None,
        cwd=project,
        env={"HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"},
    )
    _wait_until_ready(node, startup_timeout)
    return node


def _hardhat_project_candidates() -> list[Path]:
    """`hardhat-local/` in every parent of the package source, then of the working directory."""
    roots = [*Path(__file__).resolve().parents, Path.cwd(), *Path.cwd().parents]
    seen: list[Path] = []
    for root in roots:
        candidate = root / HARDHAT_PROJECT
        if candidate not in seen and candidate.is_dir():
            seen.append(candidate)
    return seen


def _native_anvil(node_modules: Path) -> Path | None:
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform)
    arch = _NPM_ARCH.get(platform.machine().lower())
    if system is None or arch is None:
        return None
    name = "anvil.exe" if system == "win32" else "anvil"
    return node_modules / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / name


def _refuse_taken_port(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port held only by TIME_WAIT connections of a stopped node is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ConfigError(
                f"cannot start {what} on {HOST}:{port}: the port is already in use by another "
                "process. Stop that process, or choose another port (CRM_LEDGER_ANVIL_PORT), or "
                "point CRM_LEDGER_RPC_URL at the node that is running there."
            ) from None


def _scratch_dir(kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"crm-ledger-{kind}-"))


def _spawn(
    kind: str,
    command: Sequence[str],
    *,
    port: int,
    log_path: Path,
    state_path: Path | None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    die_with_parent: bool = True,
) -> LocalNode:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    preexec = ownership.parent_death_signal(signal.SIGTERM) if die_with_parent else None
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            # Its own process group: a Ctrl-C meant for the service does not reach the node
            # before the service has stopped using it, and kill() can signal every process.
            start_new_session=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        log_file.close()
        raise ConfigError(f"cannot run {command[0]}: {exc.strerror}") from None
    return LocalNode(
        kind=kind,
        rpc_url=f"http://{HOST}:{port}",
        port=port,
        log_path=log_path,
        state_path=state_path,
        process=process,
        _log_file=log_file,
    )


def _wait_until_ready(node: LocalNode, timeout: float) -> None:
    """Wait until the node answers on its port with the dev chain id, from its own socket."""
    deadline = time.monotonic() + timeout
    foreign = ""
    while True:
        if not node.is_running():
            code = node.process.returncode
            node.kill()
            raise ChainUnavailable(
                f"{node.kind} exited with code {code} before answering on {node.rpc_url}"
                f"{foreign}; end of {node.log_path}:\n{node.log_tail()}"
            )
        chain_id = _chain_id(node.rpc_url)
        if chain_id is not None:
            if chain_id != DEV_CHAIN_ID:
                node.kill()
                raise ChainUnavailable(
                    f"{node.rpc_url} answered with chain id {chain_id}, not {DEV_CHAIN_ID}: "
                    f"another node took the port while {node.kind} was starting"
                )
            if ownership.group_listens_on(node.pid, node.port) is not False:
                return
            foreign = " (another process answers there: it took the port meanwhile)"
        if time.monotonic() >= deadline:
            node.kill()
            raise ChainUnavailable(
                f"{node.kind} did not answer on {node.rpc_url} within {timeout:.0f} s"
                f"{foreign}; end of {node.log_path}:\n{node.log_tail()}"
            )
        time.sleep(0.05)


def _chain_id(rpc_url: str) -> int | None:
    """The node's chain id, or None while it does not answer yet."""
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    try:
        answer = httpx.post(rpc_url, json=request, timeout=1.0).json()
        return int(answer["result"], 16)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _wait_for_group_exit(group: int, *, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    raise subprocess.TimeoutExpired(cmd=f"process group {group}", timeout=0)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
