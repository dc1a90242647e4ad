"""Benchmark: signed shop webhooks accepted and mapped to anchored records, against the plain
single-record POST /v1/orders, in the same run.

Run with `make bench-ingest` or `.venv/bin/python scripts/bench_ingest.py [--records N]
[--layout default|in-process|worker|both|all]`. Everything runs on 127.0.0.1 and stops by
itself: a fresh in-memory Anvil, the service as a subprocess on a fresh SQLite journal, and an
HTTP load generator in this process. Layouts: `default` (`crm-ledger serve` as it ships: the
ingest mapper in a child process of its own), `in-process` (`CRM_LEDGER_INGEST_PROCESS=false`:
the mapper inside `serve`'s one process, the default before), `worker`
(`CRM_LEDGER_RUN_INGEST=false` and `crm-ledger worker ingest` as a second process on the same
journal), `both` (default, then in-process), `all` (the three); each on a fresh node and
journal, each with its own plain POST baseline. Prints one table per layout;
docs/benchmarks.md records what it printed.

Phases:
  plain     N `POST /v1/orders` (one record each) from C concurrent clients: POST/s, and
            records/s from the first POST to the last record anchored.
  webhook   N Shopify `orders/create` deliveries (distinct orders, each signed with
            HMAC-SHA256 like Shopify) from C clients: accepted/s, and records/s from the first
            delivery to the last order record anchored (verify + store + 200, then mapping by
            the worker, then anchoring).
  paced     R deliveries/s offered for S seconds (open loop): accept latency p50/p99 as the
            client measures it (send → 200).
Also printed: the CPU time the service's processes (serve, its children, the ingest worker)
spent per record in each burst phase, from its first request to its last record anchored
(Anvil and the load generator not included): what the machine's load does not change much.
Each layout's plain phase starts once the mapper holds its lock (its process has started).
Target (issue 11): the webhook rate within 20 % of the plain POST rate; p99 accept < 50 ms at
200/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import hashlib
import hmac
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib
import httpx
from benchlib import free_port, open_loop, percentile
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from crm_ledger.chain.node import start_anvil

SECRET = "shpss_bench_0123456789abcdef0123456789"
SECRET_KEY = base64.b64encode(b"b" * 32).decode()


def shopify_order(n: int) -> dict[str, Any]:
    """A Shopify order (documented fields), distinct per `n`."""
    return {
        "id": 5_764_600_419_000_000_000 + n,
        "name": f"#{10_000 + n}",
        "order_number": 10_000 + n,
        "email": f"buyer{n % 500}@example.com",
        "created_at": "2026-11-25T10:00:00-05:00",
        "updated_at": "2026-11-25T10:00:05-05:00",
        "currency": "EUR",
        "financial_status": "paid",
        "fulfillment_status": None,
        "cancelled_at": None,
        "total_price": "25.00",
        "line_items": [
            {"id": 1, "sku": "TEA-1", "title": "Tea", "quantity": 2, "price": "10.50"},
            {"id": 2, "sku": "MUG-2", "title": "Mug", "quantity": 1, "price": "4.00"},
        ],
        "customer": {
            "id": 7_205_759_403_792_793_000 + n % 500,
            "email": f"buyer{n % 500}@example.com",
            "first_name": "Buyer",
            "last_name": str(n % 500),
        },
    }


def signed(n: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(shopify_order(n), separators=(",", ":")).encode()
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
    return body, {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": signature.decode(),
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Shop-Domain": "bench.myshopify.com",
    }


def plain_order(customer: str, n: int) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "order_number": f"SO-{n}",
        "lines": [
            {"sku": "TEA-1", "quantity": 2, "unit_price": "10.50"},
            {"sku": "MUG-2", "quantity": 1, "unit_price": "4.00"},
        ],
        "total": "25.00",
        "currency": "EUR",
        "status": "paid",
    }


def anchored_orders(data_dir: Path) -> tuple[int, float | None]:
    """How many order records are anchored, and when the last of them was (server clock)."""
    engine = create_engine(f"sqlite:///{data_dir / 'ledger.sqlite'}")
    try:
        with engine.connect() as conn:
            count, last = conn.execute(
                text(
                    "SELECT count(*), max(b.anchored_at) FROM records r"
                    " JOIN batches b ON b.id = r.batch_id"
                    " WHERE b.status = 'anchored' AND r.kind = 2"
                )
            ).one()
    finally:
        engine.dispose()
    return int(count), benchlib.unix_time(last) if last is not None else None


def wait_anchored(data_dir: Path, count: int, timeout: float) -> float:
    """The server time the `count`-th order record was anchored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        anchored, last = anchored_orders(data_dir)
        if anchored >= count and last is not None:
            return last
        time.sleep(0.1)
    raise RuntimeError(f"{count} order records not anchored within {timeout} s")


async def burst(send: Any, records: int, concurrency: int) -> float:
    """Run `send(n)` for n < records from `concurrency` tasks; returns elapsed seconds."""
    queue = iter(range(records))
    started = time.perf_counter()

    async def worker() -> None:
        for n in queue:
            await send(n)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


WEBHOOK_ROUTE = "/v1/webhooks/{platform}/{source_id}"


async def webhook_histogram(service: benchlib.Service) -> dict[float, float]:
    """The service's own request-duration histogram of the webhook route (`le` bound →
    cumulative count), read from /metrics: the time from a request's first byte to its
    response's last, without the load generator's own delays."""
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        text = (await client.get("/metrics")).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "crm_ledger_http_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_bucket") and labels.get("route") == WEBHOOK_ROUTE:
                buckets[float(labels["le"])] = sample.value
    return buckets


def server_share(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Of the paced phase's requests, the share the service answered within 25 and 50 ms, and
    the smallest histogram bound that holds 99 % of them (the server's p99, rounded up)."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return {"server_within_25ms": 0.0, "server_within_50ms": 0.0, "server_p99_bound_ms": 0.0}
    p99_bound = next(le for le, count in counts.items() if count >= 0.99 * total)
    return {
        "server_within_25ms": counts.get(0.025, 0.0) / total,
        "server_within_50ms": counts.get(0.05, 0.0) / total,
        "server_p99_bound_ms": p99_bound * 1000,
    }


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes `pids` and their children have used so far
    (Linux /proc; `serve`'s mapper process is its child)."""
    total = 0
    for process in pids + [child for pid in pids for child in benchlib.children(pid)]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return total / os.sysconf("SC_CLK_TCK")


def wait_mapper_ready(data_dir: Path, timeout: float) -> None:
    """Wait until some process holds the ingest mapper's lock (`workers.lock`: a `flock` on a
    file beside the SQLite journal), then a second more."""
    path = data_dir / "ledger.sqlite.ingest.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with path.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    time.sleep(1.0)
                    return
                fcntl.flock(handle, fcntl.LOCK_UN)
        time.sleep(0.1)
    raise RuntimeError(f"no ingest mapper took its lock within {timeout} s")


def start_worker(service: benchlib.Service) -> subprocess.Popen[bytes]:
    """`crm-ledger worker ingest` on the service's journal."""
    return subprocess.Popen(
        [str(benchlib.BIN / "crm-ledger"), "worker", "ingest", "--log-level", "warning"],
        env=service.env,
    )


async def run(args: argparse.Namespace, rpc_url: str, work: Path, layout: str) -> dict[str, float]:
    env = {"CRM_LEDGER_MASTER_KEY": SECRET_KEY}
    if layout == "worker":
        env["CRM_LEDGER_RUN_INGEST"] = "false"
    if layout == "in-process":
        env["CRM_LEDGER_INGEST_PROCESS"] = "false"
    service = benchlib.Service(
        work / f"service-{layout}",
        rpc_url,
        role="admin",
        env=env,
        ready=lambda readyz: readyz.get("chain", {}).get("state") == "running",
    )
    worker = start_worker(service) if layout == "worker" else None
    # The mapper's process imports the whole service before it takes its lock: let that CPU
    # pass before the plain phase, which it would otherwise slow down.
    await asyncio.to_thread(wait_mapper_ready, service.data_dir, 120)
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    try:
        async with httpx.AsyncClient(
            base_url=service.url,
            headers={"Authorization": f"Bearer {service.key}"},
            limits=limits,
            timeout=30,
        ) as client:
            customer = (
                await client.post(
                    "/v1/customers", json={"name": "Bench", "email": "bench@example.com"}
                )
            ).json()["id"]
            source = (
                await client.post(
                    "/v1/sources",
                    json={"platform": "shopify", "name": "bench", "secret": SECRET},
                )
            ).json()
            path = f"/v1/webhooks/shopify/{source['id']}"

            async def post_plain(n: int) -> None:
                answer = await client.post("/v1/orders", json=plain_order(customer, n))
                assert answer.status_code == 201, answer.text

            pids = [service.process.pid] + ([worker.pid] if worker is not None else [])
            cpu_start = cpu_seconds(pids)
            first = time.time()
            plain_elapsed = await burst(post_plain, args.records, args.concurrency)
            plain_last = await asyncio.to_thread(wait_anchored, service.data_dir, args.records, 300)
            cpu_plain = cpu_seconds(pids)

            deliveries = [signed(n) for n in range(args.records + int(args.rate * args.seconds))]

            async def post_webhook(n: int) -> None:
                body, headers = deliveries[n]
                answer = await client.post(path, content=body, headers=headers)
                assert answer.status_code == 200, answer.text

            hook_first = time.time()
            hook_elapsed = await burst(post_webhook, args.records, args.concurrency)
            hook_last = await asyncio.to_thread(
                wait_anchored, service.data_dir, 2 * args.records, 300
            )
            cpu_hook = cpu_seconds(pids)

        latencies: list[float] = []
        failures = 0
        histogram_before = await webhook_histogram(service)
        # Open loop: enough connections that the client never queues a request itself.
        paced_limits = httpx.Limits(max_connections=1000, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=service.url, limits=paced_limits, timeout=10
        ) as paced:

            async def paced_webhook(n: int) -> None:
                nonlocal failures
                body, headers = deliveries[args.records + n]
                sent = time.perf_counter()
                try:
                    answer = await paced.post(path, content=body, headers=headers)
                except httpx.HTTPError:
                    failures += 1
                    return
                if answer.status_code != 200:
                    failures += 1
                    return
                latencies.append(time.perf_counter() - sent)

            await open_loop(args.rate, args.seconds, paced_webhook)
        server = server_share(histogram_before, await webhook_histogram(service))
        return {
            "plain_post_per_second": args.records / plain_elapsed,
            "plain_records_per_second": args.records / (plain_last - first),
            "webhook_accepted_per_second": args.records / hook_elapsed,
            "webhook_records_per_second": args.records / (hook_last - hook_first),
            "plain_cpu_ms": (cpu_plain - cpu_start) * 1000 / args.records,
            "webhook_cpu_ms": (cpu_hook - cpu_plain) * 1000 / args.records,
            "paced_offered": args.rate,
            "accept_p50_ms": percentile(latencies, 50) * 1000,
            "accept_p99_ms": percentile(latencies, 99) * 1000,
            "paced_failures": failures,
            **server,
        }
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2000, help="records per burst phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="paced deliveries/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced phase length")
    parser.add_argument(
        "--layout",
        choices=("default", "in-process", "worker", "both", "all"),
        default="both",
        help="where the ingest mapper runs (see above)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-ingest-"))
    layouts = {
        "both": ("default", "in-process"),
        "all": ("default", "in-process", "worker"),
    }.get(args.layout, (args.layout,))
    for layout in layouts:
        load = os.getloadavg()
        node = start_anvil(port=free_port(), state_path=None)
        try:
            figures = asyncio.run(run(args, node.rpc_url, work, layout))
        finally:
            node.stop()
        report(layout, figures, (load, os.getloadavg()))


def report(
    layout: str, figures: dict[str, float], loads: tuple[tuple[float, ...], tuple[float, ...]]
) -> None:
    """Print one layout's table."""
    ratio = figures["webhook_records_per_second"] / figures["plain_records_per_second"]
    accept_ratio = figures["webhook_accepted_per_second"] / figures["plain_post_per_second"]
    before, after = (f"{load[0]:.1f}" for load in loads)
    print(f"\nlayout: {layout} (load average {before} before, {after} after)")
    print(f"{'':34}{'plain POST':>14}{'webhook':>14}{'webhook/plain':>16}")
    print(
        f"{'requests answered per second':34}{figures['plain_post_per_second']:14.0f}"
        f"{figures['webhook_accepted_per_second']:14.0f}{accept_ratio:16.2f}"
    )
    print(
        f"{'records anchored per second':34}{figures['plain_records_per_second']:14.0f}"
        f"{figures['webhook_records_per_second']:14.0f}{ratio:16.2f}"
    )
    print(
        f"{'server CPU ms per record':34}{figures['plain_cpu_ms']:14.2f}"
        f"{figures['webhook_cpu_ms']:14.2f}"
        f"{figures['webhook_cpu_ms'] / figures['plain_cpu_ms']:16.2f}"
    )
    print(
        f"webhook accept latency at {figures['paced_offered']:.0f}/s: "
        f"p50 {figures['accept_p50_ms']:.1f} ms, p99 {figures['accept_p99_ms']:.1f} ms, "
        f"{figures['paced_failures']:.0f} not answered 200 within 10 s",
    )
    print(
        f"the same requests as the service timed them: "
        f"{figures['server_within_25ms']:.1%} within 25 ms, "
        f"{figures['server_within_50ms']:.1%} within 50 ms, p99 ≤ "
        f"{figures['server_p99_bound_ms']:.0f} ms (its histogram's bound)",
        flush=True,
    )


if __name__ == "__main__":
    main()
