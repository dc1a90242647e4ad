"""Soak: the service with its own Anvil at a steady write rate for minutes (issue 14, part 4).

`crm-ledger serve` runs as `make run` runs it: a fresh data directory, the embedded Anvil with
its state file, the anchorer and every other worker in the one process. An open-loop client
offers `--rate` records/s as `POST /v1/interactions/batch` requests of `--batch` records each
(every request with its own `Idempotency-Key`, the customers taken in turn from 50), so a slow
answer does not slow the offered load. Every `--sample` seconds it prints:

  rss        the service's resident memory (MiB), and Anvil's
  records    records acknowledged so far; the journal's bytes per record (SQLite: the database
             file plus its WAL; PostgreSQL: pg_database_size), and the WAL file alone
  latency    p50 and p99 of the requests answered in that window, each from the moment it was
             due (time waiting for one of the client's 32 connections included); the
             anchoring backlog (/readyz)
  state      the size of Anvil's state file, and how long Anvil takes to serialise its state
             (`anvil_dumpState`, the work each `--state-interval` write repeats), plus Anvil's
             CPU share in the window

and at the end the growth after warm-up (`--warm-up`, by default the first two minutes, or a
fifth of a short run: at 500 records/s the service's RSS climbs for about 110 s as its caches
fill, then rises and falls around a flat floor): RSS,
latency, and the bytes per record. The baseline is the run's own first sample after warm-up,
so the figures hold on a loaded machine; judge growth, not absolute rates.

Usage:
    python scripts/bench_soak.py [--seconds 600] [--rate 500] [--batch 25] [--sample 10]
                                 [--database-url postgresql+psycopg://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
import httpx
from bench_api import create_customer, fresh_database, interaction
from benchlib import free_port, percentile
from sqlalchemy import create_engine, text

CUSTOMERS = 50
IN_FLIGHT = 32
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """What the client saw: one (start, seconds, status) per request, records acknowledged."""

    requests: list[tuple[float, float, int]] = field(default_factory=list)
    acknowledged: int = 0


@dataclass(frozen=True)
class Sample:
    """One line of the report."""

    at: float
    rss_mib: float
    anvil_rss_mib: float
    mapper_rss_mib: float
    full_collections: int
    records: int
    journal_bytes: int
    wal_bytes: int
    p50_ms: float
    p99_ms: float
    backlog: str
    state_bytes: int
    dump_ms: float
    anvil_cpu: float
    load: str


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB (0 when it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * PAGE / 2**20


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


class Journal:
    """The journal's size on disk: SQLite's file plus WAL, or PostgreSQL's database."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.sqlite = data_dir / "ledger.sqlite"
        self.engine = create_engine(database_url) if database_url else None

    def sizes(self) -> tuple[int, int]:
        """(journal bytes, WAL bytes); WAL is 0 on PostgreSQL (its WAL is the server's)."""
        if self.engine is not None:
            with self.engine.connect() as conn:
                size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
            return int(size or 0), 0
        wal = self.sqlite.with_name(self.sqlite.name + "-wal")
        main = self.sqlite.stat().st_size if self.sqlite.exists() else 0
        wal_size = wal.stat().st_size if wal.exists() else 0
        return main + wal_size, wal_size

    def close(self) -> None:
        """Dispose the PostgreSQL engine."""
        if self.engine is not None:
            self.engine.dispose()


async def offer(
    client: httpx.AsyncClient, args: argparse.Namespace, customers: list[str], load: Load
) -> None:
    """The open-loop writer: rate/batch requests a second for `seconds`.

    At most `IN_FLIGHT` requests are on the wire (httpcore's pool slows to a crawl with
    thousands queued); a request that waits for a slot counts that wait in its latency, which
    runs from the moment it was due, so a slow server cannot hide behind a slow client.
    """
    per_second = args.rate / args.batch
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def send(n: int) -> None:
        customer = customers[n % len(customers)]
        items = [interaction(customer, n * args.batch + i) for i in range(args.batch)]
        due = time.monotonic()
        async with slots:
            try:
                answer = await client.post(
                    "/v1/interactions/batch",
                    json={"items": items},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
        load.requests.append((due, time.monotonic() - due, status))
        if 200 <= status < 300:
            load.acknowledged += args.batch

    await benchlib.open_loop(per_second, args.seconds, send)


async def dump_ms(rpc_url: str) -> float:
    """How long Anvil takes to serialise its whole state (`anvil_dumpState`), in ms."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "anvil_dumpState", "params": []}
    async with httpx.AsyncClient(timeout=120) as rpc:
        start = time.monotonic()
        (await rpc.post(rpc_url, json=body)).raise_for_status()
        return (time.monotonic() - start) * 1000


async def sample(
    service: benchlib.Service,
    anvil: tuple[int, str],
    journal: Journal,
    load: Load,
    window: tuple[float, float],
    client: httpx.AsyncClient,
) -> Sample:
    """Measure everything once; `window`: count the requests answered from start to end."""
    anvil_pid, rpc_url = anvil
    latencies = [s for t, s, _ in load.requests if window[0] <= t + s < window[1]]
    try:
        anchoring = (await client.get("/readyz")).json()["anchoring"]
        backlog = f"{anchoring['pending_records']} rec/{anchoring['lag_seconds']:.1f} s"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        backlog = "?"
    full_collections = await gc_full_collections(client)
    cpu_before = cpu_seconds(anvil_pid)
    dump = await dump_ms(rpc_url)
    state = service.data_dir / "anvil-state.json"
    journal_bytes, wal_bytes = await asyncio.to_thread(journal.sizes)
    return Sample(
        at=time.monotonic(),
        rss_mib=rss_mib(service.process.pid),
        anvil_rss_mib=rss_mib(anvil_pid),
        mapper_rss_mib=sum(
            rss_mib(pid) for pid in benchlib.children(service.process.pid) if pid != anvil_pid
        ),
        full_collections=full_collections,
        records=load.acknowledged,
        journal_bytes=journal_bytes,
        wal_bytes=wal_bytes,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        backlog=backlog,
        state_bytes=state.stat().st_size if state.exists() else 0,
        dump_ms=dump,
        anvil_cpu=cpu_before,
        load=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
    )


async def gc_full_collections(client: httpx.AsyncClient) -> int:
    """How many full (generation 2) collections the service's garbage collector has made,
    from its /metrics (prometheus-client's `python_gc_collections_total`); -1 if unknown."""
    try:
        text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith('python_gc_collections_total{generation="2"}'):
            return int(float(line.split()[-1]))
    return -1


def print_sample(s: Sample, start: float, anvil_cpu_share: float, base_bytes: int) -> None:
    """One report line."""
    per_record = (s.journal_bytes - base_bytes) / s.records if s.records else float("nan")
    print(
        f"{s.at - start:5.0f} s  rss {s.rss_mib:6.1f} MiB (mapper {s.mapper_rss_mib:5.1f}, "
        f"anvil {s.anvil_rss_mib:6.1f})  "
        f"records {s.records:7d}  {per_record:6.0f} B/record  wal {s.wal_bytes / 2**20:6.1f} MiB  "
        f"p50 {s.p50_ms:6.1f} ms p99 {s.p99_ms:7.1f} ms  backlog {s.backlog}  "
        f"state {s.state_bytes / 2**20:6.2f} MiB dump {s.dump_ms:6.1f} ms  "
        f"anvil cpu {anvil_cpu_share:5.1%}  full gc {s.full_collections}  load {s.load}",
        flush=True,
    )


async def soak(
    service: benchlib.Service, journal: Journal, args: argparse.Namespace
) -> list[Sample]:
    """Run the load and the sampler side by side; the samples."""
    anvil_doc = json.loads((service.data_dir / "anvil.pid").read_text())
    anvil = (int(anvil_doc["pid"]), f"http://127.0.0.1:{anvil_doc['port']}")
    customers = [create_customer(service.url, service.key) for _ in range(CUSTOMERS)]
    base_bytes, _ = journal.sizes()
    load = Load()
    samples: list[Sample] = []
    headers = {"Authorization": f"Bearer {service.key}"}
    limits = httpx.Limits(max_connections=IN_FLIGHT + 4)
    async with httpx.AsyncClient(
        base_url=service.url, headers=headers, timeout=60, limits=limits
    ) as client:
        start = time.monotonic()
        writer = asyncio.create_task(offer(client, args, customers, load))
        last_cpu, last_at = cpu_seconds(anvil[0]), start
        while not writer.done():
            await asyncio.wait({writer}, timeout=args.sample)
            now = time.monotonic()
            s = await sample(service, anvil, journal, load, (now - args.sample, now), client)
            share = (s.anvil_cpu - last_cpu) / (s.at - last_at)
            last_cpu, last_at = cpu_seconds(anvil[0]), time.monotonic()
            samples.append(s)
            print_sample(s, start, share, base_bytes)
        await writer
    statuses = Counter(status for _, _, status in load.requests if not 200 <= status < 300)
    failed = f"{sum(statuses.values())}" + (
        f" (by status, 0 = no answer within 60 s: {dict(statuses)})" if statuses else ""
    )
    print(f"{len(load.requests)} requests, {failed} not 2xx, {load.acknowledged} records 2xx")
    return samples


def summarise(samples: list[Sample], args: argparse.Namespace) -> None:
    """Growth from the first sample after warm-up to the end of the run, and from the first
    third of the samples after warm-up to the last (their lowest and highest RSS: the service's
    memory rises and falls by some tens of MiB between the garbage collector's full
    collections, so two single samples can land on either side of one)."""
    warm_up = args.warm_up if args.warm_up is not None else min(120.0, args.seconds / 5)
    start = samples[0].at - args.sample
    warm = [s for s in samples if s.at - start >= warm_up] or samples
    first, last = warm[0], warm[-1]
    peak = max(s.rss_mib for s in warm)
    third = max(1, len(warm) // 3)
    early = [s.rss_mib for s in warm[:third]]
    late = [s.rss_mib for s in warm[-third:]]
    added = last.records - first.records
    per_record = (last.journal_bytes - first.journal_bytes) / added if added else float("nan")
    print(
        f"\nafter {warm_up:.0f} s of warm-up ({args.rate} records/s offered, batches of "
        f"{args.batch}, {'PostgreSQL' if args.database_url else 'SQLite'}):\n"
        f"  service rss {first.rss_mib:.1f} -> {last.rss_mib:.1f} MiB (peak {peak:.1f}): "
        f"growth {last.rss_mib / first.rss_mib - 1:+.1%}, peak {peak / first.rss_mib - 1:+.1%}\n"
        f"  service rss, first third after warm-up -> last third: lowest {min(early):.1f} -> "
        f"{min(late):.1f} MiB ({min(late) / min(early) - 1:+.1%}), highest {max(early):.1f} -> "
        f"{max(late):.1f} MiB ({max(late) / max(early) - 1:+.1%})\n"
        f"  its ingest mapper process {first.mapper_rss_mib:.1f} -> {last.mapper_rss_mib:.1f} MiB\n"
        f"  anvil rss {first.anvil_rss_mib:.1f} -> {last.anvil_rss_mib:.1f} MiB\n"
        f"  journal {per_record:.0f} bytes per record; WAL at most "
        f"{max(s.wal_bytes for s in samples) / 2**20:.1f} MiB\n"
        f"  p99 {first.p99_ms:.1f} -> {last.p99_ms:.1f} ms (median of the windows "
        f"{percentile([s.p99_ms for s in warm], 50):.1f} ms)\n"
        f"  anvil state {first.state_bytes / 2**20:.2f} -> {last.state_bytes / 2**20:.2f} MiB, "
        f"dump {first.dump_ms:.1f} -> {last.dump_ms:.1f} ms\n"
        f"  load at the end {last.load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=600, help="length of the run")
    parser.add_argument("--rate", type=int, default=500, help="records offered per second")
    parser.add_argument("--batch", type=int, default=25, help="records per request")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--database-url", help="PostgreSQL server to make a fresh database on")
    parser.add_argument(
        "--warm-up",
        type=float,
        help="seconds left out of the growth figures (default 120, or a fifth of a short run)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-soak-"))
    try:
        with fresh_database(args.database_url) as database_url:
            env = {"CRM_LEDGER_ANVIL_PORT": str(free_port())}
            if database_url:
                env["CRM_LEDGER_DATABASE_URL"] = database_url
            service = benchlib.Service(work / "data", None, env=env)
            journal = Journal(service.data_dir, database_url)
            try:
                samples = asyncio.run(soak(service, journal, args))
            finally:
                journal.close()
                service.stop()
        summarise(samples, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
