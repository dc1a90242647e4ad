"""Benchmark: chain events indexed per second, and how soon the 360 view shows a record.

Run with `.venv/bin/python scripts/bench_indexer.py [--events N] [--rate R] [--seconds S]
[--database-url URL]`. Everything runs on 127.0.0.1 and stops by itself. Prints the figures;
docs/benchmarks.md ("Indexer and CRM view") records what it printed.

Phases, all in one run:
  index   N one-record batches on a fresh in-memory Anvil: their journal rows are written in
          bulk, the N anchor transactions sent with automine off (so ~500 share a block) and
          mined. Baseline: the bare eth_getLogs fetch of the same range (JSON-RPC and JSON
          parsing only, no decoding, no database). Then a fresh indexer reads the range into
          the view (indexed batches, one `record.anchored` feed event per record, block hashes,
          cursor), timed from its first round to caught up.
  view    `crm-ledger serve` (SQLite, anchorer, loyalty worker and indexer in one process) on
          another fresh Anvil; R single-record POSTs per second for S seconds (open loop) to 10
          customers, while a watcher (a process of its own) reads every customer's 360 view in
          turn. Latency: from
          each record's commit (`recorded_at`, just before its 2xx) to the first view read
          that shows it `anchored` (or `confirmed`), p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import multiprocessing.queues
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from benchlib import Service, free_port, open_loop, percentile, unix_time
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.deploy import ensure_ledger_deployment
from crm_ledger.chain.node import start_anvil
from crm_ledger.chain.signer import dev_account
from crm_ledger.config import Settings
from crm_ledger.db.models import Batch, BatchStatus, Customer, FeedEvent, IndexedBatch, Record
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.indexer.events import AUDIT_LEDGER_TOPICS
from crm_ledger.indexer.indexer import Indexer
from crm_ledger.indexer.source import JsonRpcSource
from crm_ledger.ledger import merkle
from crm_ledger.ledger.leaf import LeafInput, RecordKind
from crm_ledger.serving import tune_garbage_collector

_ANCHOR = keccak(text="anchor(uint64,uint32,bytes32)")[:4]
_RPC_BATCH = 1000
_CHUNK_BLOCKS = 2000
# The view phase: records spread over this many customers, whose views one watcher reads in
# turn, newest 150 interactions each (at 500/s, ~100 per customer arrive in 2 s), one round
# per 0.25 s at most: ~40 reads/s, so that watching does not take the service's capacity from
# the load (and adds at most 0.25 s to what it measures).
_VIEW_CUSTOMERS = 10
_VIEW_PAGE = 150
_VIEW_ROUND_SECONDS = 0.25


# Index phase ---------------------------------------------------------------------------------


@dataclass
class IndexFigures:
    events: int
    blocks: int
    fetch_seconds: float
    index_seconds: float
    feed_events: int


async def rpc(session: aiohttp.ClientSession, url: str, calls: list[tuple[str, list[Any]]]) -> Any:
    """A JSON-RPC batch; the results in order (raises on any error)."""
    body = [
        {"jsonrpc": "2.0", "id": n, "method": method, "params": params}
        for n, (method, params) in enumerate(calls)
    ]
    async with session.post(url, json=body) as response:
        answers = await response.json(content_type=None)
    answers.sort(key=lambda answer: answer["id"])
    for answer in answers:
        if "error" in answer:
            raise RuntimeError(f"{answer['error']}")
    return [answer["result"] for answer in answers]


def write_journal(session_factory: sessionmaker[Session], events: int) -> list[bytes]:
    """`events` one-record batches over 100 customers, as the anchorer would have cut them;
    returns the roots in order."""
    customers = 100
    with session_factory.begin() as session:
        session.execute(
            insert(Customer),
            [
                {
                    "id": str(uuid.uuid4()),
                    "name": f"Bench {n}",
                    "email": f"bench{n}@example.com",
                    "tags": [],
                    "key": os.urandom(32),
                    "created_at": datetime.now(UTC),
                }
                for n in range(customers)
            ],
        )
        pks = list(session.scalars(select(Customer.pk).order_by(Customer.pk)))
    tips = dict.fromkeys(pks, merkle.ZERO_HASH)
    head = merkle.ZERO_HASH
    records, batches, roots = [], [], []
    now = datetime.now(UTC)
    for seq in range(events):
        customer = pks[seq % customers]
        commitment = hashlib.sha256(b"record %d" % seq).digest()
        leaf = LeafInput(
            seq=seq,
            kind=RecordKind.INTERACTION,
            commitment=commitment,
            previous_leaf_hash=tips[customer],
        ).leaf_hash()
        root = merkle.root([leaf])
        previous, head = head, merkle.next_head(head, root, seq, 1)
        records.append(
            {
                "id": str(uuid.uuid4()),
                "customer_pk": customer,
                "kind": int(RecordKind.INTERACTION),
                "content": None,
                "commitment": commitment,
                "created_at": now,
                "seq": seq,
                "previous_leaf_hash": tips[customer],
                "leaf_hash": leaf,
                "batch_id": seq,
            }
        )
        batches.append(
            {
                "id": seq,
                "first_seq": seq,
                "count": 1,
                "root": root,
                "previous_head": previous,
                "head": head,
                "status": BatchStatus.ANCHORED.value,
                "epoch": 1,
                "created_at": now,
            }
        )
        tips[customer] = leaf
        roots.append(root)
    with session_factory.begin() as session:
        for start in range(0, events, 5000):
            session.execute(insert(Batch), batches[start : start + 5000])
            session.execute(insert(Record), records[start : start + 5000])
    return roots


async def anchor_all(url: str, ledger: str, sender: str, roots: list[bytes]) -> None:
    """Send one anchor per root with automine off, then mine until the pool is empty."""
    async with aiohttp.ClientSession() as session:
        await rpc(session, url, [("evm_setAutomine", [False])])
        (nonce,) = await rpc(session, url, [("eth_getTransactionCount", [sender, "pending"])])
        first_nonce = int(nonce, 16)
        for start in range(0, len(roots), _RPC_BATCH):
            calls = []
            for seq in range(start, min(start + _RPC_BATCH, len(roots))):
                data = _ANCHOR + abi_encode(["uint64", "uint32", "bytes32"], [seq, 1, roots[seq]])
                calls.append(
                    (
                        "eth_sendTransaction",
                        [
                            {
                                "from": sender,
                                "to": ledger,
                                "data": "0x" + data.hex(),
                                "gas": hex(200_000),
                                "maxFeePerGas": hex(10**10),
                                "maxPriorityFeePerGas": hex(10**9),
                                # Explicit: Anvil answers the calls of a batch concurrently.
                                "nonce": hex(first_nonce + seq),
                            }
                        ],
                    )
                )
            await rpc(session, url, calls)
        while True:
            # Full blocks raise the base fee by 12.5 % each: hold it down so none of the
            # waiting transactions is priced out of the pool.
            await rpc(session, url, [("anvil_setNextBlockBaseFeePerGas", [hex(10**9)])])
            await rpc(session, url, [("evm_mine", [])])
            (status,) = await rpc(session, url, [("txpool_status", [])])
            if int(status["pending"], 16) == 0:
                break
        await rpc(session, url, [("evm_setAutomine", [True])])


async def bare_fetch(url: str, ledger: str, first: int, last: int) -> tuple[float, int]:
    """Seconds to fetch every BatchAnchored log of blocks first..last, and how many there were."""
    topics = [["0x" + topic.hex() for topic in AUDIT_LEDGER_TOPICS]]
    started = time.perf_counter()
    count = 0
    async with aiohttp.ClientSession() as session:
        for start in range(first, last + 1, _CHUNK_BLOCKS):
            end = min(start + _CHUNK_BLOCKS - 1, last)
            (logs,) = await rpc(
                session,
                url,
                [
                    (
                        "eth_getLogs",
                        [
                            {
                                "address": ledger,
                                "fromBlock": hex(start),
                                "toBlock": hex(end),
                                "topics": topics,
                            }
                        ],
                    )
                ],
            )
            count += len(logs)
    return time.perf_counter() - started, count


async def bench_index(
    events: int, engine: Engine, work: Path, *, tune_gc: bool = True
) -> IndexFigures:
    session_factory = make_session_factory(engine)
    node = start_anvil(port=free_port(), state_path=None)
    w3 = make_async_web3(node.rpc_url, 120.0)
    try:
        signer = dev_account(0)
        deployment = await ensure_ledger_deployment(
            session_factory=session_factory, chain=LedgerChain(w3, signer, None)
        )
        roots = write_journal(session_factory, events)
        await anchor_all(node.rpc_url, deployment.address, signer.address, roots)
        ledger = LedgerChain(w3, signer, deployment.address)
        assert await ledger.next_seq() == events, "not every anchor was mined"
        head = await ledger.block_number()

        fetch_seconds, fetched = await bare_fetch(
            node.rpc_url, deployment.address, deployment.block_number, head
        )
        assert fetched == events

        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=work,
            confirmations=0,
            indexer_chunk_blocks=_CHUNK_BLOCKS,
        )
        indexer = Indexer(
            session_factory=session_factory, source=JsonRpcSource(w3), settings=settings
        )
        if tune_gc:  # as `serve` and `crm-ledger worker` run the indexer
            tune_garbage_collector()
        started = time.perf_counter()
        while await indexer.step():
            pass
        index_seconds = time.perf_counter() - started
        with session_factory() as session:
            indexed = session.scalar(select(func.count()).select_from(IndexedBatch))
            feed_events = int(session.scalar(select(func.count()).select_from(FeedEvent)) or 0)
        assert indexed == events, (indexed, events)
        return IndexFigures(
            events=events,
            blocks=head - deployment.block_number + 1,
            fetch_seconds=fetch_seconds,
            index_seconds=index_seconds,
            feed_events=feed_events,
        )
    finally:
        await w3.provider.disconnect()
        node.stop()


# View phase ----------------------------------------------------------------------------------


@dataclass
class ViewFigures:
    offered: float
    accepted: float
    failures: int
    failure_reasons: dict[str, int]
    anchored: list[float]
    confirmed: list[float]
    unseen: int
    view_reads: int
    server_anchored: list[float]


def watch_views(
    url: str,
    key: str,
    customers: list[str],
    expected: multiprocessing.queues.Queue[list[str]],
    results: multiprocessing.queues.Queue[tuple[dict[str, float], dict[str, float], int]],
) -> None:
    """Read every customer's 360 view in turn until every record in `expected` (sent once the
    load is over) has been seen confirmed, or 60 s after that; report when each was first
    seen anchored and confirmed. Runs in a process of its own, so that its clock readings are
    not delayed by the load generator's event loop."""
    anchored_at: dict[str, float] = {}
    confirmed_at: dict[str, float] = {}
    reads = 0
    wanted: set[str] | None = None
    deadline = float("inf")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        while True:
            round_started = time.monotonic()
            for customer in customers:
                response = c.get(
                    f"/v1/crm/customers/{customer}",
                    params={"timeline_limit": _VIEW_PAGE, "kinds": "interaction"},
                )
                reads += 1
                now = time.time()
                for item in response.json()["timeline"]["items"]:
                    state = item["ledger"]["state"]
                    if state in ("anchored", "confirmed"):
                        anchored_at.setdefault(item["id"], now)
                    if state == "confirmed":
                        confirmed_at.setdefault(item["id"], now)
            if wanted is None and not expected.empty():
                wanted = set(expected.get())
                deadline = time.monotonic() + 60
            if wanted is not None and (
                wanted <= confirmed_at.keys() or time.monotonic() > deadline
            ):
                break
            time.sleep(max(0.0, _VIEW_ROUND_SECONDS - (time.monotonic() - round_started)))
    results.put((anchored_at, confirmed_at, reads))


async def bench_view(rate: float, seconds: float, work: Path) -> ViewFigures:
    node = start_anvil(port=free_port(), state_path=None)
    service = Service(
        work / "service",
        node.rpc_url,
        role="admin",
        ready=lambda readyz: readyz.get("chain", {}).get("indexer", {}).get("state") == "running",
    )
    headers = {"Authorization": f"Bearer {service.key}"}
    spawn = multiprocessing.get_context("spawn")
    expected: multiprocessing.queues.Queue[list[str]] = spawn.Queue()
    results: multiprocessing.queues.Queue[tuple[dict[str, float], dict[str, float], int]] = (
        spawn.Queue()
    )
    try:
        async with httpx.AsyncClient(
            base_url=service.url,
            headers=headers,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            timeout=30,
        ) as client:
            customers = []
            for n in range(_VIEW_CUSTOMERS):
                created = await client.post(
                    "/v1/customers", json={"name": f"View {n}", "email": f"view{n}@example.com"}
                )
                created.raise_for_status()
                customers.append(created.json()["id"])
            watcher = spawn.Process(
                target=watch_views, args=(service.url, service.key, customers, expected, results)
            )
            watcher.start()
            committed: dict[str, float] = {}
            failures = 0
            reasons: Counter[str] = Counter()

            async def post(n: int) -> None:
                nonlocal failures
                body = {
                    "customer_id": customers[n % len(customers)],
                    "type": "support_call",
                    "channel": "phone",
                    "occurred_at": "2026-11-25T10:00:00Z",
                    "details": {"ticket": n},
                }
                try:
                    response = await client.post("/v1/interactions", json=body)
                    response.raise_for_status()
                    record = response.json()
                    # The commit's time on the server's clock: just before the 2xx, so the
                    # latency below is, if anything, longer than from the 2xx.
                    committed[record["id"]] = unix_time(record["recorded_at"])
                except httpx.HTTPStatusError as exc:
                    failures += 1
                    reasons[f"HTTP {exc.response.status_code}: {exc.response.text[:200]}"] += 1
                except httpx.HTTPError as exc:
                    failures += 1
                    reasons[type(exc).__name__] += 1

            await open_loop(rate, seconds, post)
            expected.put(list(committed))
            anchored_at, confirmed_at, reads = await asyncio.to_thread(results.get, True, 120)
            await asyncio.to_thread(watcher.join, 10)
        mined_at = service.anchored_at()
        # Commit -> the anchorer recording the batch as mined, both on the server's clock.
        server = [mined_at[i] - t for i, t in committed.items() if i in mined_at]
        anchored = [max(0.0, anchored_at[i] - t) for i, t in committed.items() if i in anchored_at]
        confirmed = [
            max(0.0, confirmed_at[i] - t) for i, t in committed.items() if i in confirmed_at
        ]
        return ViewFigures(
            offered=rate,
            accepted=len(committed) / seconds,
            failures=failures,
            failure_reasons=dict(reasons),
            anchored=anchored,
            confirmed=confirmed,
            unseen=len(committed) - len(confirmed),
            view_reads=reads,
            server_anchored=server,
        )
    finally:
        service.stop()
        node.stop()


def bench_engine(database_url: str | None, work: Path) -> tuple[Engine, str, Any]:
    """A migrated engine on a fresh database, its description, and a cleanup callable."""
    if database_url is None:
        engine = make_engine(f"sqlite:///{work / 'index.sqlite'}")
        upgrade_database(engine)
        return engine, "SQLite", engine.dispose
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{database_url}?options=-csearch_path%3D{schema}")
    upgrade_database(engine)

    def cleanup() -> None:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return engine, "PostgreSQL", cleanup


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="BatchAnchored events")
    parser.add_argument("--rate", type=float, default=500.0, help="records/s offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="view phase length")
    parser.add_argument(
        "--database-url",
        help="index into this PostgreSQL database (a fresh schema) instead of SQLite",
    )
    parser.add_argument("--skip-view", action="store_true", help="run the index phase only")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's default collector thresholds (serve and the workers tune them)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-indexer-"))
    engine, backend, cleanup = bench_engine(args.database_url, work)
    try:
        index = asyncio.run(bench_index(args.events, engine, work, tune_gc=not args.default_gc))
        view = None if args.skip_view else asyncio.run(bench_view(args.rate, args.seconds, work))
    finally:
        cleanup()
        shutil.rmtree(work, ignore_errors=True)

    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"\ncrm-ledger indexer benchmark ({when}, {os.cpu_count()} cores)")
    print(f"index: {index.events} BatchAnchored events in {index.blocks} blocks, into {backend}")
    print(f"{'':<34}{'seconds':>10}{'events/s':>12}")
    print(
        f"{'bare eth_getLogs fetch (baseline)':<34}{index.fetch_seconds:>10.3f}"
        f"{index.events / index.fetch_seconds:>12.0f}"
    )
    print(
        f"{'indexed into the view':<34}{index.index_seconds:>10.3f}"
        f"{index.events / index.index_seconds:>12.0f}"
    )
    print(
        f"indexing costs {index.index_seconds / index.fetch_seconds:.1f}x the bare fetch; "
        f"{index.feed_events} feed events written"
    )
    if view is not None:
        print(
            f"view: offered {view.offered:.0f} records/s, accepted {view.accepted:.0f}/s, "
            f"{view.failures} failed; {view.view_reads} 360-view reads while watching"
        )
        for reason, count in sorted(view.failure_reasons.items(), key=lambda kv: -kv[1]):
            print(f"  failed: {count} x {reason}")
        for name, values in (("anchored", view.anchored), ("confirmed", view.confirmed)):
            print(
                f"  commit -> view shows {name:<10} p50 {percentile(values, 50):.3f} s   "
                f"p99 {percentile(values, 99):.3f} s   "
                f"max {max(values, default=float('nan')):.3f} s   ({len(values)} records)"
            )
        print(
            f"  server side, commit -> anchorer records the batch mined: "
            f"p50 {percentile(view.server_anchored, 50):.3f} s   "
            f"p99 {percentile(view.server_anchored, 99):.3f} s"
        )
        print(f"  records never seen confirmed within 60 s of the load's end: {view.unseen}")
    print(json.dumps({"index": index.__dict__}, default=str))


if __name__ == "__main__":
    main()
