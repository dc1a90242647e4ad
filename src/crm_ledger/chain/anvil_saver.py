"""Saving a running Anvil's state to its `--state` file: when the chain changed, at a cost bound.

Exports: `StateSaver`, `SAVE_MIN_INTERVAL_SECONDS`, `SAVE_DUTY`.

Anvil's own `--state-interval N` rewrites the whole state as one JSON document every N seconds,
whether or not anything happened, and the document grows with every block: at 1 s it costs
nothing on a fresh chain, but a chain of many thousand anchored batches takes longer to write
than the interval, and Anvil then spends a whole core rewriting it (docs/benchmarks.md, issue
14, "Anvil's state file"). `StateSaver` replaces it with a thread of the process that owns the
node:

- it asks Anvil for its state (`anvil_dumpState`, the same document gzipped) only when the
  latest block changed since the last save, so an idle chain is never rewritten;
- it waits at least `SAVE_MIN_INTERVAL_SECONDS` between saves, and at least the last save's
  duration divided by `SAVE_DUTY` (20 times as long as a save takes), so saving uses at most
  5 % of the time however large the chain grows;
- it writes the file atomically (a `.partial` beside it, fsync, rename), so a SIGKILL or a power
  cut during a save leaves the previous file whole.

Anvil keeps its `--state` flag: it loads the file at start and still writes it on a clean exit
(the SIGTERM that `LocalNode.stop` and the parent-death signal send). What a SIGKILL of Anvil
itself can lose is therefore the blocks since the last save, which the anchorer re-anchors from
the journal (a rollback, never a reset: the genesis block is in every save).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from pathlib import Path

import httpx

__all__ = ["SAVE_DUTY", "SAVE_MIN_INTERVAL_SECONDS", "StateSaver"]

log = logging.getLogger(__name__)

#: No two saves closer than this; a SIGKILL of Anvil on a small chain loses at most this much.
SAVE_MIN_INTERVAL_SECONDS = 1.0
#: The largest share of the time spent saving: a save that took t waits t / SAVE_DUTY.
SAVE_DUTY = 0.05
_CHUNK = 1 << 20
_DUMP_TIMEOUT_SECONDS = 600.0
_TIP_TIMEOUT_SECONDS = 5.0


class StateSaver:
    """Saves the state of the Anvil at `rpc_url` to `state_path` while it runs (see above)."""

    def __init__(
        self,
        rpc_url: str,
        state_path: Path,
        *,
        min_interval: float = SAVE_MIN_INTERVAL_SECONDS,
        duty: float = SAVE_DUTY,
    ) -> None:
        self.rpc_url = rpc_url
        self.state_path = state_path
        self.min_interval = min_interval
        self.duty = duty
        #: Saves written so far, the last one's duration (s) and size (bytes).
        self.saves = 0
        self.last_seconds = 0.0
        self.last_bytes = 0
        self._saved_tip: str | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="anvil-state-saver", daemon=True)
        # One HTTP client for every call: `httpx.post` makes a client, and with it a TLS
        # context, per call (a tenth of an idle service's CPU, once a second).
        self._http: httpx.Client | None = None

    def start(self) -> StateSaver:
        """Start saving in the background; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = _DUMP_TIMEOUT_SECONDS) -> None:
        """Stop the thread, letting a save in progress finish (within `timeout` seconds)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def save_if_changed(self) -> bool:
        """Save now if the latest block changed since the last save; whether it saved."""
        with self._lock:
            tip = self._tip()
            if tip == self._saved_tip:
                return False
            started = time.monotonic()
            size = self._write(self._dump())
            self.saves += 1
            self.last_seconds = time.monotonic() - started
            self.last_bytes = size
            # The tip read before the dump: a block mined meanwhile is saved next time.
            self._saved_tip = tip
            return True

    def _run(self) -> None:
        pause = self.min_interval
        while not self._stopping.wait(pause):
            try:
                saved = self.save_if_changed()
            except (httpx.HTTPError, OSError, ValueError, KeyError, zlib.error) as exc:
                # Anvil busy, stopping or gone: the next round tries again.
                log.warning("could not save Anvil's state to %s: %s", self.state_path, exc)
                saved = False
            pause = self.pause_after(saved=saved)

    def pause_after(self, *, saved: bool) -> float:
        """Seconds to wait before the next look: the last save's duration / duty after a save."""
        return max(self.min_interval, self.last_seconds / self.duty if saved else 0.0)

    def _tip(self) -> str:
        block = self._call("eth_getBlockByNumber", ["latest", False], _TIP_TIMEOUT_SECONDS)
        return str(json.loads(block)["result"]["hash"])

    def _dump(self) -> bytes:
        """The gzipped state, as `anvil_dumpState` returns it."""
        answer = json.loads(self._call("anvil_dumpState", [], _DUMP_TIMEOUT_SECONDS))
        if "result" not in answer:
            raise ValueError(f"anvil_dumpState failed: {answer.get('error')}")
        return bytes.fromhex(str(answer["result"]).removeprefix("0x"))

    def _write(self, gzipped: bytes) -> int:
        """Unzip into `<file>.partial`, fsync, rename over the file; the bytes written."""
        partial = self.state_path.with_name(f"{self.state_path.name}.partial")
        inflate = zlib.decompressobj(wbits=31)
        size = 0
        with partial.open("wb") as out:
            view = memoryview(gzipped)
            for start in range(0, len(view), _CHUNK):
                chunk = inflate.decompress(view[start : start + _CHUNK])
                out.write(chunk)
                size += len(chunk)
            tail = inflate.flush()
            out.write(tail)
            size += len(tail)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.state_path)
        directory = os.open(self.state_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return size

    def _call(self, method: str, params: list[object], timeout: float) -> bytes:
        """One JSON-RPC call (with `_lock` held)."""
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        if self._http is None:
            self._http = httpx.Client()
        return self._http.post(self.rpc_url, json=request, timeout=timeout).content
