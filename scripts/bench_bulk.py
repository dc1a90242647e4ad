"""Bulk path, ingest to anchored (issue 14): `POST /v1/interactions/batch` to receipts.

Run with `make bench-bulk` or `.venv/bin/python scripts/bench_bulk.py [--records 100000]`.
Everything runs on 127.0.0.1 and stops by itself: a fresh in-memory Anvil, the service as a
subprocess on a fresh SQLite journal (synchronous=FULL), and an HTTP client in this process
(its bodies are built before the clock starts). Phases, all in one run:

  ingest    the baseline: N records as batches of 1,000 from C concurrent clients to a service
            that does not anchor (`CRM_LEDGER_RUN_ANCHORER=false`): records/s from the first
            POST to the last 201.
  e2e       the same N records to a service that anchors: records/s from the first POST to
            the last receipt answering 200 (the last record of each of the last C batches
            answered is asked for its receipt until it is anchored; one of them is the last
            record written, and the anchorer cuts in write order), its ratio to `ingest`, and
            gas per record; then the journal is checked to hold all N records anchored.
  paced     R records/s offered for S seconds (open loop), as batches of B every B/R seconds:
            p50/p99 from each record's commit (its `recorded_at`, the server's clock just before
            the 2xx) to the moment its batch was recorded as anchored (the server's clock).

Targets on a 2-core machine: e2e >= 20,000 records/s and <= 100 gas per record; paced p99 <= 1 s
at 1,000 records/s. The client shares the machine's cores with the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib
import httpx
from benchlib import free_port, open_loop, percentile, unix_time
from sqlalchemy import create_engine, text

from crm_ledger.chain.node import start_anvil

BATCH_ITEMS = 1000


@dataclass
class Ingested:
    """What a bulk run answered: seconds from the first POST to the last 201, every batch's
    last record id, and the answers that were not 201."""

    seconds: float
    last_ids: list[str]
    failures: int


def batch_body(customers: list[str], start: int, size: int) -> bytes:
    """One batch request body: `size` interactions spread over `customers`."""
    items = [
        {
            "customer_id": customers[n % len(customers)],
            "type": "order_update",
            "channel": "web",
            "occurred_at": "2026-12-01T10:00:00Z",
            "details": {"n": n, "source": "bench-bulk"},
        }
        for n in range(start, start + size)
    ]
    return json.dumps({"items": items}).encode()


def create_customers(service: benchlib.Service, count: int) -> list[str]:
    """`count` customers the records are spread over."""
    headers = {"Authorization": f"Bearer {service.key}"}
    found = []
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        for n in range(count):
            answer = client.post(
                "/v1/customers", json={"name": f"Bulk {n}", "email": f"bulk{n}@example.com"}
            )
            answer.raise_for_status()
            found.append(str(answer.json()["id"]))
    return found


def _client(service: benchlib.Service, concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=service.url,
        headers={"Authorization": f"Bearer {service.key}", "Content-Type": "application/json"},
        timeout=120,
        # Idle connections are closed before uvicorn's 5 s keep-alive ends them under a request.
        limits=httpx.Limits(max_connections=concurrency, keepalive_expiry=2.0),
    )


async def ingest(service: benchlib.Service, bodies: list[bytes], concurrency: int) -> Ingested:
    """POST every body, `concurrency` at a time; time from the first POST to the last 201."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    last_ids: list[str] = []
    failures = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while not queue.empty():
            answer = await client.post("/v1/interactions/batch", content=queue.get_nowait())
            if answer.status_code != 201:
                failures += 1
                continue
            last_ids.append(answer.json()["items"][-1]["id"])

    async with _client(service, concurrency) as client:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return Ingested(time.monotonic() - start, last_ids, failures)


async def until_receipts(service: benchlib.Service, record_ids: list[str]) -> None:
    """Ask each record for its receipt until it answers 200 (202 means not anchored yet)."""
    async with _client(service, 1) as client:
        for record_id in record_ids:
            pause = 0.005
            while True:
                answer = await client.get(f"/v1/records/{record_id}/receipt")
                if answer.status_code == 200:
                    break
                if answer.status_code != 202:
                    raise RuntimeError(f"receipt of {record_id}: {answer.status_code}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)


async def paced(
    service: benchlib.Service, customers: list[str], rate: float, seconds: float, batch: int
) -> tuple[dict[str, float], int]:
    """`rate` records/s offered as batches of `batch` (open loop); record id → commit time."""
    committed: dict[str, float] = {}
    failures = 0
    bodies = [
        batch_body(customers, n * batch, batch) for n in range(int(rate * seconds / batch) + 1)
    ]

    async with _client(service, 16) as client:

        async def send(n: int) -> None:
            nonlocal failures
            try:
                answer = await client.post("/v1/interactions/batch", content=bodies[n])
            except httpx.TransportError:
                failures += 1
                return
            if answer.status_code != 201:
                failures += 1
                return
            for record in answer.json()["items"]:
                committed[record["id"]] = unix_time(record["recorded_at"])

        await open_loop(rate / batch, seconds, send)
    return committed, failures


def wait_anchored(service: benchlib.Service, ids: set[str], timeout: float) -> dict[str, float]:
    """Record id → anchored time once every one of `ids` is anchored (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        anchored = service.anchored_at()
        if ids <= anchored.keys() or time.monotonic() > deadline:
            return anchored
        time.sleep(0.2)


def gas_totals(service: benchlib.Service) -> tuple[int, int, int]:
    """Gas used, records and batches over every anchored batch."""
    engine = create_engine(f"sqlite:///{service.data_dir / 'ledger.sqlite'}")
    with engine.connect() as conn:
        gas, count, batches = conn.execute(
            text("SELECT sum(gas_used), sum(count), count(*) FROM batches WHERE status='anchored'")
        ).one()
    engine.dispose()
    return int(gas or 0), int(count or 0), int(batches)


async def run(args: argparse.Namespace, rpc_url: str, work: Path) -> dict[str, float]:
    """The three phases; the figures by name."""
    figures: dict[str, float] = {}
    chunks = [
        (start, min(BATCH_ITEMS, args.records - start))
        for start in range(0, args.records, BATCH_ITEMS)
    ]

    service = benchlib.Service(work / "ingest", rpc_url, env={"CRM_LEDGER_RUN_ANCHORER": "false"})
    try:
        customers = await asyncio.to_thread(create_customers, service, args.customers)
        bodies = [batch_body(customers, start, size) for start, size in chunks]
        alone = await ingest(service, bodies, args.concurrency)
    finally:
        service.stop()
    figures["ingest_rate"] = args.records / alone.seconds
    figures["ingest_failures"] = alone.failures

    service = benchlib.Service(work / "e2e", rpc_url)
    try:
        customers = await asyncio.to_thread(create_customers, service, args.customers)
        bodies = [batch_body(customers, start, size) for start, size in chunks]
        start = time.monotonic()
        ingested = await ingest(service, bodies, args.concurrency)
        await until_receipts(service, ingested.last_ids[-args.concurrency :])
        figures["e2e_seconds"] = time.monotonic() - start
        figures["e2e_unanchored"] = args.records - len(service.anchored_at())
        figures["e2e_ingest_rate"] = args.records / ingested.seconds
        figures["e2e_failures"] = ingested.failures
        gas, count, batches = gas_totals(service)
        figures["gas_per_record"], figures["batches"] = gas / max(count, 1), batches

        committed, failures = await paced(
            service, customers, args.rate, args.seconds, args.paced_batch
        )
        anchored = await asyncio.to_thread(wait_anchored, service, set(committed), 60)
        paced_gas, paced_count, paced_batches = (
            a - b for a, b in zip(gas_totals(service), (gas, count, batches), strict=True)
        )
        figures["paced_gas_per_record"] = paced_gas / max(paced_count, 1)
        figures["paced_records_per_batch"] = paced_count / max(paced_batches, 1)
    finally:
        service.stop()
    latencies = [anchored[i] - t for i, t in committed.items() if i in anchored]
    figures["e2e_rate"] = args.records / figures["e2e_seconds"]
    figures["paced_accepted"] = len(committed) / args.seconds
    figures["paced_failures"] = failures
    figures["paced_unanchored"] = len(committed) - len(latencies)
    figures["paced_p50"] = percentile(latencies, 50)
    figures["paced_p99"] = percentile(latencies, 99)
    return figures


def report(figures: dict[str, float], args: argparse.Namespace, load: str) -> None:
    """Print the figures, the ratio and the targets."""
    f = figures
    print(
        f"\n{args.records} records, batches of {BATCH_ITEMS}, {args.concurrency} clients, "
        f"{args.customers} customers, load {load}"
    )
    print(
        f"ingest alone (no anchorer)   {f['ingest_rate']:9.0f} records/s"
        f"  ({f['ingest_failures']:.0f} failed)"
    )
    print(
        f"first POST -> last receipt   {f['e2e_rate']:9.0f} records/s  "
        f"({f['e2e_seconds']:.2f} s; its POSTs alone {f['e2e_ingest_rate']:.0f} records/s; "
        f"{f['e2e_failures']:.0f} failed, {f['e2e_unanchored']:.0f} not anchored)  target >= 20,000"
    )
    print(f"  ratio to ingest alone      {f['e2e_rate'] / f['ingest_rate']:9.1%}")
    print(
        f"  gas per record             {f['gas_per_record']:9.1f}  "
        f"({f['batches']:.0f} batches)   target <= 100"
    )
    print(
        f"paced {args.rate:.0f} records/s offered ({args.paced_batch} per POST, "
        f"{args.seconds:.0f} s): accepted {f['paced_accepted']:.0f}/s, "
        f"{f['paced_failures']:.0f} failed, {f['paced_unanchored']:.0f} not anchored in 60 s"
    )
    print(
        f"  gas per record             {f['paced_gas_per_record']:9.1f}  "
        f"({f['paced_records_per_batch']:.0f} records per batch)"
    )
    print(
        f"  commit -> anchored         p50 {f['paced_p50']:.3f} s, p99 {f['paced_p99']:.3f} s"
        "   target p99 <= 1 s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="records in ingest and e2e")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent bulk clients")
    parser.add_argument("--customers", type=int, default=100, help="customers to spread over")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced records/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced phase length")
    parser.add_argument("--paced-batch", type=int, default=50, help="records per paced POST")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-bulk-"))
    node = start_anvil(port=free_port(), state_path=None)
    try:
        figures = asyncio.run(run(args, node.rpc_url, work))
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(figures, args, " ".join(Path("/proc/loadavg").read_text().split()[:3]))


if __name__ == "__main__":
    main()
