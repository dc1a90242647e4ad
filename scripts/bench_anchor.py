"""Benchmark: records through the API to anchored, against one transaction per record.

Run with `make bench` or `.venv/bin/python scripts/bench_anchor.py [--records N]`. Everything
runs on 127.0.0.1 and stops by itself: a fresh in-memory Anvil, the service as a subprocess on
a fresh SQLite journal, and an HTTP load generator in this process. Prints one table with the
figures for both paths and the ratios; docs/benchmarks.md records what it printed.

Phases, all in one run:
  naive     one `NaiveRecordLog.logRecord(hash)` transaction per record, signed locally and sent
            back to back with web3.py; latency is send → receipt.
  burst     N single-record POSTs as fast as C concurrent clients go: POST/s, then records/s from
            first POST to last record anchored, and gas per record of the batches that made.
  paced     500 records/s offered for S seconds (open loop): p50/p99 from each record's
            commit (its `recorded_at`, just before the 2xx) to the moment its batch was recorded
            as anchored, both read from the server's clock.
  wrk       when `wrk` is installed (Debian package): single-record POST/s with a load generator
            that is not Python, so the figure is the server's and not this script's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import benchlib
import httpx
from benchlib import free_port, open_loop, percentile, unix_time
from eth_account import Account
from sqlalchemy import create_engine, text
from web3 import Web3

from crm_ledger.chain.artifacts import load_artifact
from crm_ledger.chain.node import start_anvil
from crm_ledger.chain.signer import dev_account

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Figures:
    records: int
    records_per_second: float
    gas_per_record: float
    p50_seconds: float
    p99_seconds: float


def bench_naive(rpc_url: str, records: int) -> Figures:
    """One transaction per record, as fast as web3.py can send them."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    account = dev_account(3)
    artifact = load_artifact("NaiveRecordLog")
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    nonce = w3.eth.get_transaction_count(account.address)
    deploy = factory.constructor().build_transaction(
        {"from": account.address, "nonce": nonce, "chainId": 31337}
    )
    tx = w3.eth.send_raw_transaction(Account.sign_transaction(deploy, account.key).raw_transaction)
    address = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
    contract = w3.eth.contract(address=address, abi=artifact.abi)
    nonce += 1
    fees = contract.functions.logRecord(b"\x00" * 32).build_transaction(
        {"from": account.address, "nonce": nonce, "chainId": 31337, "gas": 60_000}
    )
    template = {
        k: fees[k] for k in ("from", "chainId", "gas", "maxFeePerGas", "maxPriorityFeePerGas")
    }
    latencies: list[float] = []
    gas = 0
    started = time.perf_counter()
    for i in range(records):
        record_hash = Web3.keccak(text=f"record-{i}")
        call = contract.functions.logRecord(record_hash).build_transaction(
            {**template, "nonce": nonce + i}
        )
        sent_at = time.perf_counter()
        tx_hash = w3.eth.send_raw_transaction(
            Account.sign_transaction(call, account.key).raw_transaction
        )
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.001)
        latencies.append(time.perf_counter() - sent_at)
        gas += int(receipt["gasUsed"])
    elapsed = time.perf_counter() - started
    return Figures(
        records=records,
        records_per_second=records / elapsed,
        gas_per_record=gas / records,
        p50_seconds=percentile(latencies, 50),
        p99_seconds=percentile(latencies, 99),
    )


class Service(benchlib.Service):
    """The service with batches of up to `batch_max_records`; `chain_up=False` starts it
    against an unreachable node (ready without a running anchorer)."""

    def __init__(
        self, data_dir: Path, rpc_url: str, batch_max_records: int, *, chain_up: bool = True
    ) -> None:
        super().__init__(
            data_dir,
            rpc_url,
            env={"CRM_LEDGER_BATCH_MAX_RECORDS": str(batch_max_records)},
            ready=lambda readyz: not chain_up or readyz.get("chain", {}).get("state") == "running",
        )

    def batch_gas(self, first_seq: int) -> tuple[int, int, list[int], float]:
        """(gas used, records, batch sizes, seconds from first cut to last anchored) of the
        anchored batches from `first_seq` on."""
        engine = create_engine(f"sqlite:///{self.data_dir / 'ledger.sqlite'}")
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT count, gas_used, created_at, anchored_at FROM batches"
                    " WHERE status = 'anchored' AND first_seq >= :s ORDER BY id"
                ),
                {"s": first_seq},
            ).all()
        engine.dispose()
        span = max(unix_time(r[3]) for r in rows) - min(unix_time(r[2]) for r in rows)
        return sum(r[1] for r in rows), sum(r[0] for r in rows), [r[0] for r in rows], span


def interaction(customer: str, i: int) -> dict[str, object]:
    return {
        "customer_id": customer,
        "type": "support_call",
        "channel": "phone",
        "occurred_at": "2026-11-25T10:00:00Z",
        "details": {"ticket": i, "topic": "billing"},
    }


async def create_customers(client: httpx.AsyncClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = await client.post(
            "/v1/customers", json={"name": f"Bench {i}", "email": f"bench{i}@example.com"}
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


async def burst(
    client: httpx.AsyncClient, customers: list[str], records: int, concurrency: int
) -> tuple[float, dict[str, float]]:
    """POST as fast as `concurrency` clients go; returns (elapsed, record id → 2xx time)."""
    done: dict[str, float] = {}
    counter = iter(range(records))

    async def worker() -> None:
        for i in counter:
            r = await client.post(
                "/v1/interactions", json=interaction(customers[i % len(customers)], i)
            )
            r.raise_for_status()
            record = r.json()
            # The server's commit time, just before its 2xx: one clock with `anchored_at`,
            # and no client-side queueing in the figure.
            done[record["id"]] = unix_time(record["recorded_at"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, done


async def paced(
    client: httpx.AsyncClient, customers: list[str], rate: float, seconds: float
) -> tuple[dict[str, float], int]:
    """Offer `rate` POSTs per second for `seconds` (open loop); returns 2xx times and failures."""
    done: dict[str, float] = {}
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        try:
            r = await client.post(
                "/v1/interactions", json=interaction(customers[i % len(customers)], i)
            )
            r.raise_for_status()
            record = r.json()
            # The server's commit time, just before its 2xx: one clock with `anchored_at`,
            # and no client-side queueing in the figure.
            done[record["id"]] = unix_time(record["recorded_at"])
        except httpx.HTTPError:
            failures += 1

    await open_loop(rate, seconds, one)
    return done, failures


def wait_anchored(service: Service, ids: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        anchored = service.anchored_at()
        if ids <= anchored.keys() or time.monotonic() > deadline:
            return anchored
        time.sleep(0.1)


async def post_backlog(service: Service, records: int, concurrency: int) -> tuple[list[str], float]:
    """Create customers and POST `records` interactions; returns (customer ids, elapsed)."""
    async with client_for(service, concurrency) as client:
        customers = await create_customers(client, 50)
        elapsed, _ = await burst(client, customers, records, concurrency)
    return customers, elapsed


def client_for(service: Service, concurrency: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=service.url,
        headers={"Authorization": f"Bearer {service.key}"},
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=30,
    )


async def bench_service(args: argparse.Namespace, rpc_url: str, work: Path) -> dict[str, object]:
    data_dir = work / "service"
    # Backlog: the chain is unreachable while records arrive; then it comes back.
    down = Service(
        data_dir, f"http://127.0.0.1:{free_port()}", args.batch_max_records, chain_up=False
    )
    try:
        customers, backlog_post_elapsed = await post_backlog(down, args.backlog, args.concurrency)
    finally:
        down.stop()
    service = Service(data_dir, rpc_url, batch_max_records=args.batch_max_records)
    try:
        await asyncio.to_thread(wait_anchored_count, service, args.backlog, 300)
        # From the first batch cut to the last one anchored.
        gas, counted, sizes, backlog_elapsed = service.batch_gas(0)
        async with client_for(service, args.concurrency) as client:
            first = time.time()
            elapsed, burst_done = await burst(client, customers, args.records, args.concurrency)
            anchored = await asyncio.to_thread(wait_anchored, service, set(burst_done), 120)
            last_anchor = max(anchored[i] for i in burst_done)
            burst_gas, burst_counted, burst_sizes, _ = service.batch_gas(args.backlog)
            paced_done, failures = await paced(client, customers, args.rate, args.seconds)
            anchored = await asyncio.to_thread(wait_anchored, service, set(paced_done), 60)
        wrk_rate = await asyncio.to_thread(wrk_post_rate, service, customers[0])
        latencies = [anchored[i] - t for i, t in paced_done.items() if i in anchored]
        return {
            "backlog_post_per_second": args.backlog / backlog_post_elapsed,
            "backlog_anchor_per_second": args.backlog / backlog_elapsed,
            "gas_per_record": gas / counted,
            "backlog_batch_sizes": sizes,
            "post_per_second": args.records / elapsed,
            "records_per_second": args.records / (last_anchor - first),
            "burst_gas_per_record": burst_gas / burst_counted,
            "burst_batch_sizes": burst_sizes,
            "paced_offered": args.rate,
            "paced_accepted": len(paced_done) / args.seconds,
            "paced_failures": failures,
            "paced_unanchored": len(paced_done) - len(latencies),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "wrk_post_per_second": wrk_rate,
        }
    finally:
        service.stop()


def wait_anchored_count(service: Service, count: int, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        anchored = service.anchored_at()
        if len(anchored) >= count or time.monotonic() > deadline:
            return anchored
        time.sleep(0.1)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def wrk_post_rate(service: Service, customer: str, seconds: int = 10) -> float | None:
    """Single-record POST/s measured by wrk (16 connections), or None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = service.data_dir / "post.lua"
    body = json.dumps(interaction(customer, 0))
    script.write_text(WRK_SCRIPT.format(body=body, key=service.key))
    out = subprocess.run(
        [wrk, "-t2", "-c16", f"-d{seconds}s", "-s", str(script), f"{service.url}/v1/interactions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=5000, help="burst records through the API")
    parser.add_argument(
        "--backlog", type=int, default=10000, help="records queued while the chain is down"
    )
    parser.add_argument("--naive-records", type=int, default=1000, help="naive transactions")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500.0, help="paced records/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced phase length")
    parser.add_argument("--batch-max-records", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-"))
    node = start_anvil(port=free_port(), state_path=None)
    try:
        naive = bench_naive(node.rpc_url, args.naive_records)
        ours = asyncio.run(bench_service(args, node.rpc_url, work))
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("records/s POST→anchored", ours["records_per_second"], naive.records_per_second),
        ("gas per record (backlog)", ours["gas_per_record"], naive.gas_per_record),
        ("gas per record (burst)", ours["burst_gas_per_record"], naive.gas_per_record),
        ("p50 2xx→anchored (s)", ours["p50"], naive.p50_seconds),
        ("p99 2xx→anchored (s)", ours["p99"], naive.p99_seconds),
    ]
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"\ncrm-ledger anchoring benchmark ({when}, {os.cpu_count()} cores)")
    print(f"{'figure':<28}{'crm-ledger':>14}{'naive':>14}{'ratio':>10}")
    for name, mine, theirs in rows:
        ratio = mine / theirs if theirs else float("nan")
        print(f"{name:<28}{mine:>14.3f}{theirs:>14.3f}{ratio:>10.3f}")
    print(
        f"\nbacklog: {args.backlog} records POSTed while the chain was down "
        f"({ours['backlog_post_per_second']:.0f} POST/s), anchored at "
        f"{ours['backlog_anchor_per_second']:.0f} records/s once it was back; "
        f"batch sizes {ours['backlog_batch_sizes']}"
    )
    speedup = float(ours["backlog_anchor_per_second"]) / naive.records_per_second
    print(f"anchoring only vs naive: {speedup:.1f}x")
    print(
        f"burst: {args.records} records, single-record POST/s with {args.concurrency} clients: "
        f"{ours['post_per_second']:.0f}; batch sizes {ours['burst_batch_sizes']}"
    )
    print(
        f"paced: offered {ours['paced_offered']:.0f}/s, accepted {ours['paced_accepted']:.0f}/s, "
        f"{ours['paced_failures']} failed, {ours['paced_unanchored']} not anchored in time"
    )
    wrk_rate = ours["wrk_post_per_second"]
    print(
        "single-record POST/s measured by wrk (16 connections, 10 s): "
        + (f"{wrk_rate:.0f}" if wrk_rate is not None else "not measured (install wrk)")
    )
    print(f"naive: {naive.records} transactions, one per record")


if __name__ == "__main__":
    main()
