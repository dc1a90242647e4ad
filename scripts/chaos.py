"""Chaos suite: the service under write load while its process, chain, database or disk fails.

Run `python scripts/chaos.py` (every scenario, full length: ~10 minutes) or pick some:
`python scripts/chaos.py kill chain --kills 5 --chain-outage 10`. Everything runs on 127.0.0.1
in temporary directories, every loop is bounded and every scenario stops by itself.

Scenarios (each starts `crm-ledger serve` as a subprocess, as `make run` does):

    kill      kill -9 of the service N times under write load (SQLite journal), in the default
              setup: the service starts its own Anvil on a state file in its data directory
    chain     the Anvil node killed -9 for S seconds under load, then restarted from its
              state file (which lags by up to a second: a rollback the anchorer must repair)
    postgres  a throwaway PostgreSQL cluster of its own (initdb, a free port) restarted with
              `pg_ctl restart -m immediate` N times under load
    disk      the SQLite journal on a small tmpfs that is then filled: writes must answer 503
              problem documents, nothing half-written, and recover once space returns
    fuzz      schemathesis against /openapi.json with a key of every role

The load is a client that POSTs interactions, each with its own Idempotency-Key, and retries a
write with the same key after a connection error or a 503, as a careful client does; a 201 is an
acknowledged write. After each scenario the journal and the chain are checked: every
acknowledged id is read back from the journal and its receipt verified against the chain
(`lost`), no seq is in two batches on chain (`anchored twice`), journal and chain seqs are
contiguous (`seq gaps`), and every 5xx that is not a 503 problem document is a bug (`5xx`).
`recovery` is the longest time from a fault's end (or the kill) to the next acknowledged write
(for `chain`: to the backlog anchored again).

Exports (for tests/e2e/test_chaos.py): `SCENARIOS`, `Outcome`, `run_scenarios`, `format_table`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, text
from web3 import AsyncWeb3, Web3

from crm_ledger.audit.chain import read_only_chain
from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.client import make_async_web3
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.db.models import Batch, BatchStatus, Deployment, Record
from crm_ledger.db.session import make_engine, make_session_factory
from crm_ledger.errors import LedgerError
from crm_ledger.journal.receipts import build_receipt
from crm_ledger.ledger.receipts import Receipt
from crm_ledger.verifier.record import verify_record

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


def settle(database_url: str, timeout: float) -> float:
    """Wait until every record has a seq and every batch is anchored; the seconds it took."""
    engine = make_engine(database_url)

    def settled() -> bool:
        try:
            with engine.connect() as conn:
                pending = conn.scalar(select(func.count()).where(Record.seq.is_(None)))
                unfinished = conn.scalar(
                    select(func.count()).where(Batch.status != BatchStatus.ANCHORED.value)
                )
        except Exception:
            return False
        return pending == 0 and unfinished == 0

    try:
        return wait_until(settled, timeout, "every record anchored")
    finally:
        engine.dispose()


def genesis_hash(rpc_url: str, timeout: float = 90) -> str:
    """The hash of block 0 on the node at `rpc_url`, once it answers (the service acknowledges
    writes before its own Anvil is up)."""
    found: list[str] = []

    def answered() -> bool:
        with contextlib.suppress(Exception):
            found.append(str(Web3(Web3.HTTPProvider(rpc_url)).eth.get_block(0)["hash"].hex()))
        return bool(found)

    wait_until(answered, timeout, f"the node at {rpc_url} answering")
    return found[0]


def check_ledger(database_url: str, rpc_url: str, acknowledged: set[str], outcome: Outcome) -> None:
    """Fill `lost`, `anchored_twice` and `seq_gaps` from the journal and the chain."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            records = session.execute(select(Record.id, Record.seq)).all()
            deployment = session.scalars(
                select(Deployment)
                .where(Deployment.contract == "AuditLedger")
                .order_by(Deployment.epoch.desc())
            ).first()
            assert deployment is not None, "no AuditLedger deployment in the journal"
            seqs = sorted(r.seq for r in records if r.seq is not None)
            outcome.seq_gaps = len(set(range(len(records))) - set(seqs)) + (
                len(seqs) - len(set(seqs))
            )
            known = {r.id for r in records}
            missing = acknowledged - known
            outcome.lost = len(missing)
            outcome.notes += [
                f"acknowledged but not in the journal: {m}" for m in sorted(missing)[:5]
            ]
            contract = Web3(Web3.HTTPProvider(rpc_url)).eth.contract(
                address=deployment.address, abi=load_artifact("AuditLedger").abi
            )
            events = contract.events.BatchAnchored.get_logs(from_block=deployment.block_number)
            covered: dict[int, int] = {}
            for event in events:
                for seq in range(event.args.firstSeq, event.args.firstSeq + event.args.count):
                    covered[seq] = covered.get(seq, 0) + 1
            outcome.anchored_twice = sum(1 for times in covered.values() if times > 1)
            next_seq = contract.functions.nextSeq().call()
            outcome.seq_gaps += len(set(range(next_seq)) - set(covered))
            if next_seq != len(records):
                outcome.notes.append(f"chain nextSeq {next_seq}, journal {len(records)} records")
                outcome.seq_gaps += abs(next_seq - len(records))
            unverified = asyncio.run(
                _unverified(session, rpc_url, deployment.address, acknowledged & known)
            )
            outcome.lost += len(unverified)
            outcome.notes += [f"receipt does not verify: {u}" for u in unverified[:5]]
    finally:
        engine.dispose()


async def _unverified(session: Any, rpc_url: str, address: str, ids: set[str]) -> list[str]:
    """Ids among `ids` whose receipt does not verify against the chain."""
    w3: AsyncWeb3[Any] = make_async_web3(rpc_url, 30)
    failed = []
    try:
        chain = read_only_chain(w3, address)
        ordered = sorted(ids)
        for start in range(0, len(ordered), 500):
            ids_chunk = ordered[start : start + 500]
            rows = session.scalars(select(Record).where(Record.id.in_(ids_chunk))).all()
            for record in rows:
                try:
                    receipt = Receipt.from_json(build_receipt(session, record))
                except LedgerError as exc:
                    failed.append(f"{record.id} ({exc})")
                    continue
                check = await verify_record(
                    receipt=receipt,
                    content=record.content,
                    key=record.customer.key,
                    chain=chain,
                    expected_contract=address,
                )
                if check.verdict != "valid":
                    failed.append(record.id)
                    continue
    finally:
        await w3.provider.disconnect()
    return failed


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


def finish(
    outcome: Outcome,
    writer: Writer,
    database_url: str,
    rpc_url: str,
    *,
    settle_timeout: float,
    service: Service | None = None,
) -> Outcome:
    """Wait for the backlog, then check the ledger and fill the writer's figures."""
    try:
        settle(database_url, settle_timeout)
    except TimeoutError as exc:
        state = service.readyz() if service is not None else {}
        state.get("chain", {}).pop("indexer", None)
        outcome.notes.append(f"{exc}; /readyz: {json.dumps(state)[:1500]}")
    outcome.acknowledged = len(writer.acknowledged)
    outcome.server_errors += len([e for e in writer.server_errors if not e.startswith("4")])
    outcome.unavailable += writer.unavailable
    outcome.notes += writer.server_errors[:5]
    if writer.abandoned:
        outcome.notes.append(
            f"{writer.abandoned} writes abandoned after {WRITE_PATIENCE_SECONDS} s"
        )
    if writer.refused:
        outcome.notes.append(f"{writer.refused} writes refused with a 4xx")
    check_ledger(database_url, rpc_url, set(writer.acknowledged), outcome)
    return outcome


def scenario_kill(work: Path, *, kills: int) -> Outcome:
    """kill -9 of the service `kills` times under load on a SQLite journal, in the default
    setup: no RPC URL, so the service starts its own Anvil (on a free port) with its state file
    in the data directory, and each restart loads that file."""
    outcome = Outcome("kill -9 service", notes=[f"{kills} kills, the service's own Anvil"])
    anvil_port = free_port()
    env = {"CRM_LEDGER_DATA_DIR": str(work), "CRM_LEDGER_ANVIL_PORT": str(anvil_port)}
    return _kill_repeatedly(outcome, env, f"http://{HOST}:{anvil_port}", work=work, kills=kills)


def _kill_repeatedly(
    outcome: Outcome, env: dict[str, str], rpc_url: str, *, work: Path, kills: int
) -> Outcome:
    database_url = f"sqlite:///{work / 'ledger.sqlite'}"
    with loaded_service(env, max_writes=100_000) as (service, writer):
        recoveries = []
        genesis = genesis_hash(rpc_url)
        for n in range(1, kills + 1):
            # Each kill lands once the service anchors again, so that every restart is seen to
            # come back on the same chain.
            wait_until(
                lambda: service.readyz().get("chain", {}).get("state") in ("running", "halted"),
                90,
                "anchoring running",
            )
            time.sleep(random.uniform(0.3, 1.5))
            killed_at = time.monotonic()
            service.kill9()
            service.start()
            wait_until(
                lambda at=killed_at: writer.acknowledged_after(at), 90, "a write after restart"
            )
            recoveries.append(time.monotonic() - killed_at)
            if genesis_hash(rpc_url) != genesis:
                outcome.chain_resets += 1
                outcome.notes.append(f"kill {n}: the chain came back with another genesis")
                break
        outcome.notes.append(f"chain resets: {outcome.chain_resets}")
        time.sleep(0.5)
        outcome.recovery_seconds = max(recoveries, default=0.0)
        writer.stop()
        outcome.server_errors += service.server_errors_counted()
        try:
            wait_until(
                lambda: service.readyz().get("chain", {}).get("state") == "running",
                60,
                "anchoring running after the last restart",
            )
        except TimeoutError as exc:
            outcome.notes.append(f"{exc}: {service.readyz().get('chain')}")
            outcome.server_errors += 1
        return finish(
            outcome,
            writer,
            database_url,
            rpc_url,
            settle_timeout=120,
            service=service,
        )


def scenario_chain(work: Path, *, outage: float) -> Outcome:
    """The chain killed -9 for `outage` seconds under load, then restarted from its state."""
    outcome = Outcome("chain killed", notes=[f"{outage:.0f} s outage"])
    database_url = f"sqlite:///{work / 'ledger.sqlite'}"
    state = work / "chain" / "anvil-state.json"
    chain = start_anvil(port=free_port(), state_path=state)
    port = chain.port
    try:
        env = {"CRM_LEDGER_DATA_DIR": str(work), "CRM_LEDGER_RPC_URL": chain.rpc_url}
        with loaded_service(env, max_writes=100_000) as (service, writer):
            time.sleep(3)  # the deployment reaches the state file (written every second)
            chain.kill()
            down_at = time.monotonic()
            before = len(writer.acknowledged)
            time.sleep(outage)
            during = len(writer.acknowledged) - before
            outcome.notes.append(f"{during} writes acknowledged while the chain was down")
            if during == 0:
                outcome.notes.append("no write acknowledged during the outage")
                outcome.server_errors += 1
            chain = start_anvil(port=port, state_path=state)
            restarted_at = time.monotonic()
            time.sleep(1)
            writer.stop()
            settle(database_url, 180)
            outcome.recovery_seconds = time.monotonic() - restarted_at
            rollbacks = service.readyz()["chain"].get("rollbacks_detected", 0)
            outcome.notes.append(
                f"rollbacks repaired: {rollbacks}; outage {restarted_at - down_at:.0f} s"
            )
            outcome.server_errors += service.server_errors_counted()
            return finish(
                outcome, writer, database_url, chain.rpc_url, settle_timeout=120, service=service
            )
    finally:
        chain.kill()


@contextlib.contextmanager
def throwaway_postgres(work: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A PostgreSQL cluster of its own on a free port: (URL, restart -m immediate)."""
    data = work / "pgdata"
    data.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(work, "postgres")
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *args: subprocess.run(  # noqa: E731
        [*as_postgres, *args], check=True, capture_output=True, timeout=120
    )
    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {work} -c listen_addresses={HOST} -c fsync=on"
    pg_ctl = ["pg_ctl", "-D", str(data), "-l", str(work / "postgres.log"), "-o", options, "-w"]
    run(*pg_ctl, "start")
    try:
        yield (
            f"postgresql+psycopg://postgres@{HOST}:{port}/postgres",
            lambda: run(*pg_ctl, "-m", "immediate", "restart"),
        )
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run(*pg_ctl, "-m", "immediate", "stop")


def scenario_postgres(work: Path, *, restarts: int) -> Outcome:
    """PostgreSQL restarted (-m immediate: a crash and recovery) `restarts` times under load."""
    outcome = Outcome("PostgreSQL restarted", notes=[f"{restarts} restarts"])
    with throwaway_postgres(work) as (database_url, restart), external_anvil() as chain:
        env = {
            "CRM_LEDGER_DATA_DIR": str(work / "data"),
            "CRM_LEDGER_DATABASE_URL": database_url,
            "CRM_LEDGER_RPC_URL": chain.rpc_url,
        }
        with loaded_service(env, max_writes=100_000) as (service, writer):
            recoveries = []
            for _ in range(restarts):
                time.sleep(random.uniform(0.5, 1.5))
                restart()
                back_at = time.monotonic()
                wait_until(
                    lambda at=back_at: writer.acknowledged_after(at), 60, "a write after restart"
                )
                recoveries.append(time.monotonic() - back_at)
            time.sleep(0.5)
            writer.stop()
            outcome.recovery_seconds = max(recoveries)
            outcome.server_errors += service.server_errors_counted()
            return finish(
                outcome, writer, database_url, chain.rpc_url, settle_timeout=120, service=service
            )


def scenario_disk(work: Path, *, full_seconds: float) -> Outcome:
    """The SQLite journal on a 32 MB tmpfs, filled for `full_seconds` under load."""
    outcome = Outcome("disk full (SQLite)")
    mount = work / "tmpfs"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        outcome.notes.append(f"skipped: cannot mount a tmpfs ({mounted.stderr.decode().strip()})")
        return outcome
    database_url = f"sqlite:///{mount / 'ledger.sqlite'}"
    try:
        with external_anvil() as chain:
            env = {"CRM_LEDGER_DATA_DIR": str(mount), "CRM_LEDGER_RPC_URL": chain.rpc_url}
            with loaded_service(env, max_writes=100_000) as (service, writer):
                time.sleep(1)
                filler = mount / "filler"
                with filler.open("wb") as out, contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * (1 << 20))
                        out.flush()
                full_at = time.monotonic()
                try:
                    wait_until(lambda: writer.unavailable > 0, 30, "a 503 while the disk is full")
                except TimeoutError as exc:
                    outcome.notes.append(str(exc))
                    outcome.server_errors += 1
                acknowledged_while_full = len(writer.acknowledged)
                time.sleep(max(0.0, full_seconds - (time.monotonic() - full_at)))
                outcome.notes.append(
                    f"{writer.unavailable} answers 503 while full, "
                    f"{len(writer.acknowledged) - acknowledged_while_full} writes acknowledged "
                    "(into pages SQLite had free)"
                )
                filler.unlink()
                freed_at = time.monotonic()
                wait_until(
                    lambda: writer.acknowledged_after(freed_at), 60, "a write after space returns"
                )
                outcome.recovery_seconds = time.monotonic() - freed_at
                time.sleep(0.5)
                writer.stop()
                outcome.server_errors += service.server_errors_counted()
                finish(
                    outcome,
                    writer,
                    database_url,
                    chain.rpc_url,
                    settle_timeout=120,
                    service=service,
                )
            engine = make_engine(database_url)
            with engine.connect() as conn:
                integrity = conn.scalar(text("PRAGMA integrity_check"))
                count = conn.scalar(select(func.count()).select_from(Record))
            engine.dispose()
            if integrity != "ok":
                outcome.notes.append(f"integrity_check: {integrity}")
                outcome.lost += 1
            # One record per acknowledged write (creating the customer writes none); any other
            # record was half-written: committed, never acknowledged, although retried.
            if count != outcome.acknowledged:
                outcome.notes.append(f"{count} records for {outcome.acknowledged} acknowledged")
                outcome.seq_gaps += abs(count - outcome.acknowledged)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return outcome


def scenario_fuzz(work: Path, *, examples: int, phases: str) -> Outcome:
    """schemathesis against /openapi.json with a key of each role; 5xx counted by the service."""
    outcome = Outcome(
        "schemathesis, 4 roles", notes=[f"{examples} examples per operation, phases {phases}"]
    )
    with external_anvil() as chain:
        service = Service({"CRM_LEDGER_DATA_DIR": str(work), "CRM_LEDGER_RPC_URL": chain.rpc_url})
        keys = {role: service.cli("keys", "create", "--role", role) for role in ROLES}
        service.start()
        try:
            for role, key in keys.items():
                finished = subprocess.run(
                    [
                        str(BIN / "st"),
                        "run",
                        f"{service.url}/openapi.json",
                        "--header",
                        f"Authorization: Bearer {key}",
                        "--checks",
                        "not_a_server_error",
                        "--max-examples",
                        str(examples),
                        "--workers",
                        "1",
                        "--request-timeout",
                        "20",
                        "--seed",
                        "10",
                        "--phases",
                        phases,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    cwd=work,  # its .schemathesis/ cache stays in the scenario's directory
                )
                outcome.notes.append(f"{role}: schemathesis exit {finished.returncode}")
                if finished.returncode not in (0, 1):
                    outcome.notes.append(finished.stdout[-2000:] + finished.stderr[-2000:])
            answers = service.answers_counted()
            outcome.server_errors = service.server_errors_counted()
            outcome.unavailable = answers.get(503, 0)
            by_class = {
                f"{c}xx": sum(n for s, n in answers.items() if s // 100 == c) for c in (2, 4, 5)
            }
            outcome.notes.append(f"{sum(answers.values())} requests answered: {by_class}")
        finally:
            service.stop()
    return outcome


SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "kill": scenario_kill,
    "chain": scenario_chain,
    "postgres": scenario_postgres,
    "disk": scenario_disk,
    "fuzz": scenario_fuzz,
}


def run_scenarios(names: list[str], **sizes: Any) -> list[Outcome]:
    """Run scenarios `names` one after another, each in a temporary directory of its own."""
    arguments = {
        "kill": {"kills": sizes.get("kills", 20)},
        "chain": {"outage": sizes.get("chain_outage", 60.0)},
        "postgres": {"restarts": sizes.get("pg_restarts", 5)},
        "disk": {"full_seconds": sizes.get("disk_full_seconds", 10.0)},
        "fuzz": {
            "examples": sizes.get("fuzz_examples", 20),
            "phases": sizes.get("fuzz_phases", "examples,coverage,fuzzing"),
        },
    }
    outcomes = []
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"crm-ledger-chaos-{name}-"))
        try:
            outcomes.append(SCENARIOS[name](work, **arguments[name]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return outcomes


def format_table(outcomes: list[Outcome]) -> str:
    """The outcomes as a Markdown table, then each scenario's notes."""
    lines = [
        "| scenario | acknowledged | lost | anchored twice | seq gaps | 5xx | 503 | recovery |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.acknowledged} | {o.lost} | {o.anchored_twice} | {o.seq_gaps} "
            f"| {o.server_errors} | {o.unavailable} | {o.recovery_seconds:.1f} s |"
        )
    lines.append("")
    for o in outcomes:
        lines += [f"- {o.scenario}: " + "; ".join(o.notes)] if o.notes else []
    return "\n".join(lines)


def main() -> int:
    """Parse the command line, run the scenarios, print the table; 1 if any figure is wrong."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--chain-outage", type=float, default=60.0)
    parser.add_argument("--pg-restarts", type=int, default=5)
    parser.add_argument("--disk-full-seconds", type=float, default=10.0)
    parser.add_argument("--fuzz-examples", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    outcomes = run_scenarios(
        args.scenarios or list(SCENARIOS),
        kills=args.kills,
        chain_outage=args.chain_outage,
        pg_restarts=args.pg_restarts,
        disk_full_seconds=args.disk_full_seconds,
        fuzz_examples=args.fuzz_examples,
    )
    print(format_table(outcomes))
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
