"""What the benchmark scripts share: ports, percentiles, server timestamps, and the service
as a subprocess. Imported by `scripts/bench_*.py` (run as scripts, so this directory is on the
path)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def unix_time(value: object) -> float:
    """A timestamp as the service stores or answers it (naive means UTC) → UNIX seconds."""
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def children(pid: int) -> list[int]:
    """The running children of process `pid` (none once it is gone)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    found = []
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


async def open_loop(rate: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> None:
    """Start `send(n)` `rate` times a second for `seconds`, whether or not earlier ones have
    answered (open loop: a slow server does not slow the offered load), then wait for all."""
    sends = []
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.create_task(send(n)))
    await asyncio.gather(*sends)


class Service:
    """`crm-ledger serve` as a subprocess on a fresh data directory (SQLite), on the node at
    `rpc_url` (None: the service starts its own Anvil in the data directory), with an API key
    of `role`; ready once `ready(readyz)` holds. `serve_args` are added to `serve`'s command
    line (e.g. `("--workers", "2")`)."""

    def __init__(
        self,
        data_dir: Path,
        rpc_url: str | None,
        *,
        role: str = "recorder",
        env: dict[str, str] | None = None,
        ready: Callable[[dict[str, Any]], bool] = lambda _readyz: True,
        serve_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "CRM_LEDGER_DATA_DIR": str(data_dir),
            **(env or {}),
        }
        # No RPC URL: the service starts its own Anvil, as `make run` does.
        if rpc_url is not None:
            self.env["CRM_LEDGER_RPC_URL"] = rpc_url
        else:
            self.env.pop("CRM_LEDGER_RPC_URL", None)
        self.key = subprocess.run(
            [str(BIN / "crm-ledger"), "keys", "create", "--role", role],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.process = subprocess.Popen(
            [
                str(BIN / "crm-ledger"),
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *serve_args,
            ],
            env=self.env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if ready(httpx.get(f"{self.url}/readyz", timeout=2).json()):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the service did not become ready within 60 s")

    def stop(self) -> None:
        """Terminate the service and wait for it."""
        self.process.terminate()
        self.process.wait(timeout=30)

    def anchored_at(self) -> dict[str, float]:
        """Record id → UNIX time its batch was recorded as anchored (the server's clock)."""
        engine = create_engine(f"sqlite:///{self.data_dir / 'ledger.sqlite'}")
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT r.id, b.anchored_at FROM records r JOIN batches b ON b.id = r.batch_id"
                    " WHERE b.status = 'anchored'"
                )
            ).all()
        engine.dispose()
        return {str(record): unix_time(at) for record, at in rows}
