"""What every scenario runs: the service as a subprocess, a client thread writing under load,
and the figures of one scenario (`Outcome`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from crm_ledger.chain.node import LocalNode, start_anvil

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
ROLES = ("recorder", "auditor", "marketing", "admin")
#: A write is retried (same Idempotency-Key) for this long before the client gives up on it.
WRITE_PATIENCE_SECONDS = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition()` every 50 ms; the seconds it took. Raises `TimeoutError` naming `what`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


@dataclass
class Outcome:
    """One scenario's figures: the row of the table."""

    scenario: str
    acknowledged: int = 0
    lost: int = 0
    anchored_twice: int = 0
    seq_gaps: int = 0
    server_errors: int = 0
    unavailable: int = 0
    recovery_seconds: float = 0.0
    chain_resets: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, skipped, no chain reset, no 5xx but 503 problem documents."""
        figures = (self.lost, self.anchored_twice, self.seq_gaps, self.server_errors)
        return figures == (0, 0, 0, 0) and self.chain_resets == 0


class Service:
    """`crm-ledger serve` as a subprocess that can be killed -9 and started again."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = {
            **os.environ,
            "CRM_LEDGER_BATCH_MAX_AGE_SECONDS": "0.1",
            "CRM_LEDGER_ANCHOR_RETRY_MAX_SECONDS": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        """`crm-ledger ARGS` against the same journal; its standard output."""
        return subprocess.run(
            [str(BIN / "crm-ledger"), *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()

    def start(self) -> None:
        """Start it and wait until /healthz answers (at most 120 s: a start took up to ~60 s on
        a 2-vCPU machine at load average 20)."""
        self.process = subprocess.Popen(
            [str(BIN / "crm-ledger"), "serve", "--port", str(self.port), "--log-level", "error"],
            env=self.env,
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._healthy, 120, "the service answering /healthz")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"crm-ledger serve exited with {self.process.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self) -> None:
        """SIGKILL the service process, as `kill -9` does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM and wait (30 s), else SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def readyz(self) -> dict[str, Any]:
        """The /readyz body (whatever its status)."""
        answer: dict[str, Any] = httpx.get(f"{self.url}/readyz", timeout=5).json()
        return answer

    def server_errors_counted(self) -> int:
        """5xx answers other than 503 this process counted since it started (/metrics)."""
        return sum(
            n for status, n in self.answers_counted().items() if status >= 500 and status != 503
        )

    def answers_counted(self) -> dict[int, int]:
        """Answers by HTTP status this process counted since it started (/metrics)."""
        counts: dict[int, int] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("crm_ledger_http_requests_total{"):
                status = int(line.split('status="', 1)[1][:3])
                counts[status] = counts.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
        return counts


class Writer:
    """A client thread writing interactions; retries each write with its key until a 201."""

    def __init__(self, service: Service, key: str, customer: str, *, max_writes: int) -> None:
        self.service = service
        self.headers = {"Authorization": f"Bearer {key}"}
        self.customer = customer
        self.max_writes = max_writes
        self.acknowledged: dict[str, float] = {}
        self.server_errors: list[str] = []
        self.unavailable = 0
        self.refused = 0
        self.abandoned = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-writer")

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop after the write in flight is acknowledged (or abandoned)."""
        self._stop.set()
        self._thread.join(timeout=WRITE_PATIENCE_SECONDS + 30)

    def acknowledged_after(self, moment: float) -> bool:
        """Whether some write was acknowledged after monotonic time `moment`."""
        return any(at > moment for at in list(self.acknowledged.values())[-50:])

    def _run(self) -> None:
        run = f"{time.time_ns():x}"
        with httpx.Client(base_url=self.service.url, headers=self.headers, timeout=5) as client:
            for n in range(self.max_writes):
                if self._stop.is_set():
                    return
                self._write(client, n, f"chaos-{run}-{n}")

    def _write(self, client: httpx.Client, n: int, key: str) -> None:
        body = {
            "customer_id": self.customer,
            "type": "support_call",
            "channel": "phone",
            "occurred_at": "2026-12-06T10:00:00Z",
            "details": {"n": n},
        }
        deadline = time.monotonic() + WRITE_PATIENCE_SECONDS
        pause = 0.02
        while time.monotonic() < deadline:
            try:
                answer = client.post(
                    "/v1/interactions", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError:
                answer = None  # down or killed mid-request: retry the same key
            if answer is not None:
                if answer.status_code == 201:
                    self.acknowledged[answer.json()["id"]] = time.monotonic()
                    return
                is_problem = answer.headers.get("content-type", "").startswith(
                    "application/problem+json"
                )
                if answer.status_code == 503 and is_problem:
                    self.unavailable += 1
                elif answer.status_code == 429:
                    time.sleep(float(answer.headers.get("Retry-After", "1")))
                    continue
                elif answer.status_code >= 500:
                    self.server_errors.append(f"{answer.status_code} {answer.text[:300]}")
                else:
                    self.refused += 1
                    self.server_errors.append(f"{answer.status_code} {answer.text[:300]}")
                    return
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        self.abandoned += 1


def create_customer(service: Service, key: str) -> str:
    """A customer to write interactions for (retried while the service starts up)."""
    answer = httpx.post(
        f"{service.url}/v1/customers",
        json={"name": "Chaos Monkey", "email": "chaos@example.com"},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "chaos-customer"},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


@contextlib.contextmanager
def external_anvil(state_path: Path | None = None) -> Iterator[LocalNode]:
    """An Anvil of the scenario's own on a free port."""
    node = start_anvil(port=free_port(), state_path=state_path)
    try:
        yield node
    finally:
        node.kill()


@contextlib.contextmanager
def loaded_service(env: dict[str, str], *, max_writes: int) -> Iterator[tuple[Service, Writer]]:
    """The service started with a recorder key, a customer and a writer thread running."""
    service = Service(env)
    key = service.cli("keys", "create", "--role", "recorder")
    service.start()
    try:
        customer = create_customer(service, key)
        with Writer(service, key, customer, max_writes=max_writes) as writer:
            yield service, writer
    finally:
        service.stop()
