"""Benchmark: the ledger audit and bundle verification over a large journal, on one core.

Run with `.venv/bin/python scripts/bench_audit.py [--records N] [--database URL]`. It builds a
journal of N anchored records (default 1,000,000; 10,000 customers, batches of 2,000) in a fresh
SQLite file (or a fresh schema of the PostgreSQL database at --database), then, in one run:

  baseline   the raw cost of the hashing an audit cannot avoid, with hashlib/hmac alone over
             the same bytes already in memory: HMAC-SHA256 of each content, SHA-256 of each
             leaf input, and the tree's node hashes (one per leaf)
  fetch      streaming the audit's columns of every record from the database, doing nothing
  audit      `audit_journal`: the ledger audit (the chain's answers prepared in memory, as
             `read_chain` returns them; reading them from a node is timed separately in the
             docs)
  export     `open_export(...).lines()` of the whole ledger to a file
  verify     `check_bundle_offline` + `check_bundle_on_chain` (an in-memory chain) of that file
  parse      `json.loads` of every line of that file, doing nothing else

and prints records/s for each and their ratios to the baseline. docs/benchmarks.md ("## Audit")
records what it printed. Target: audit and verify at >= 50,000 records/s (1M in <= 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, create_engine, insert, select, text, update

from crm_ledger.audit.bundle import Scope
from crm_ledger.audit.export import open_export
from crm_ledger.audit.ledger import ChainBatch, ChainView, audit_journal
from crm_ledger.audit.snapshot import DeploymentRecord, read_snapshot
from crm_ledger.audit.verifier import check_bundle_offline, check_bundle_on_chain
from crm_ledger.db.models import Batch, BatchStatus, Customer, Deployment, Record, utcnow
from crm_ledger.db.session import make_engine, upgrade_database
from crm_ledger.journal.receipts import AUDIT_LEDGER
from crm_ledger.ledger import merkle

CHAIN_ID = 31337
ADDRESS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CODE_HASH = hashlib.sha256(b"AuditLedger").digest()
GENESIS = hashlib.sha256(b"genesis").digest()
T = TypeVar("T")


@dataclass(frozen=True)
class Journal:
    """What was written, kept in memory for the baseline."""

    contents: list[bytes]
    keys: list[bytes]
    leaf_inputs: list[bytes]
    batches: list[ChainBatch]


def build(engine: Engine, *, records: int, customers: int, batch_size: int) -> Journal:
    """Write `records` anchored records of `customers` customers, in batches of `batch_size`."""
    now = utcnow()
    customer_ids = [str(uuid.uuid4()) for _ in range(customers)]
    keys = [secrets.token_bytes(32) for _ in range(customers)]
    tips = [merkle.ZERO_HASH] * customers
    contents: list[bytes] = []
    record_keys: list[bytes] = []
    leaf_inputs: list[bytes] = []
    chain_batches: list[ChainBatch] = []
    head = merkle.ZERO_HASH
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "pk": i + 1,
                    "id": customer_ids[i],
                    "name": f"Customer {i}",
                    "email": f"c{i}@example.com",
                    "tags": [],
                    "key": keys[i],
                    "created_at": now,
                }
                for i in range(customers)
            ],
        )
        conn.execute(
            insert(Deployment).values(
                contract=AUDIT_LEDGER,
                epoch=1,
                chain_id=CHAIN_ID,
                genesis_hash=GENESIS,
                address=ADDRESS,
                code_hash=CODE_HASH,
                tx_hash=bytes(32),
                block_number=1,
                deployed_at=now,
            )
        )
    for batch_id, first in enumerate(range(0, records, batch_size)):
        count = min(batch_size, records - first)
        rows = []
        leaves = []
        for seq in range(first, first + count):
            who = seq % customers
            record_id = str(uuid.uuid4())
            content = json.dumps(
                {
                    "v": 1,
                    "id": record_id,
                    "customer_id": customer_ids[who],
                    "kind": "interaction",
                    "recorded_at": "2026-11-25T10:00:00.000000Z",
                    "body": {
                        "channel": "phone",
                        "details": {"topic": "billing", "minutes": seq % 60},
                        "occurred_at": "2026-11-25T09:58:00Z",
                        "type": "support_call",
                    },
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
            commitment = hmac.digest(keys[who], content, "sha256")
            leaf_input = b"\x01" + seq.to_bytes(8, "big") + b"\x01" + commitment + tips[who]
            leaf = hashlib.sha256(b"\x00" + leaf_input).digest()
            rows.append(
                {
                    "id": record_id,
                    "customer_pk": who + 1,
                    "kind": 1,
                    "content": content,
                    "commitment": commitment,
                    "created_at": now,
                    "seq": seq,
                    "previous_leaf_hash": tips[who],
                    "leaf_hash": leaf,
                    "batch_id": batch_id,
                }
            )
            tips[who] = leaf
            leaves.append(leaf)
            contents.append(content)
            record_keys.append(keys[who])
            leaf_inputs.append(leaf_input)
        root = merkle.root(leaves)
        previous_head, head = head, merkle.next_head(head, root, first, count)
        tx_hash = hashlib.sha256(b"tx%d" % batch_id).digest()
        block_hash = hashlib.sha256(b"block%d" % batch_id).digest()
        chain_batches.append(
            ChainBatch(batch_id, first, count, root, head, tx_hash, batch_id + 2, block_hash)
        )
        with engine.begin() as conn:
            conn.execute(
                insert(Batch).values(
                    id=batch_id,
                    first_seq=first,
                    count=count,
                    root=root,
                    previous_head=previous_head,
                    head=head,
                    status=BatchStatus.ANCHORED.value,
                    epoch=1,
                    tx_hash=tx_hash,
                    block_number=batch_id + 2,
                    block_hash=block_hash,
                    created_at=now,
                )
            )
            conn.execute(insert(Record), rows)
        print(f"\r  built {first + count:,} records", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with engine.begin() as conn:
        # As autovacuum would have by now on a journal this size: the planner needs the
        # table sizes.
        conn.execute(text("ANALYZE"))
        conn.execute(
            update(Customer)
            .where(Customer.pk == bindparam("b_pk"))
            .values(last_leaf_hash=bindparam("b_tip")),
            [{"b_pk": i + 1, "b_tip": tips[i]} for i in range(customers)],
        )
    return Journal(contents, record_keys, leaf_inputs, chain_batches)


@dataclass
class MemoryChain:
    """The chain's answers for the built journal, from memory (an `AuditChain`)."""

    batches: list[ChainBatch]

    async def chain_id(self) -> int:
        return CHAIN_ID

    async def code_hash(self, address: str) -> bytes:
        return CODE_HASH

    async def batch(self, batch_id: int) -> ChainBatch | None:
        return self.batches[batch_id] if batch_id < len(self.batches) else None

    async def receipt(self, tx_hash: bytes) -> ChainBatch | None:
        return next((b for b in self.batches if b.tx_hash == tx_hash), None)

    async def block_hash(self, number: int) -> bytes | None:
        return self.batches[number - 2].block_hash


def timed(label: str, work: Callable[[], T]) -> tuple[T, float]:
    print(f"  {label}…", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def baseline(journal: Journal) -> None:
    """HMAC per content, SHA-256 per leaf input, one node hash per leaf."""
    sha256 = hashlib.sha256
    digest = hmac.digest
    for key, content, leaf_input in zip(
        journal.keys, journal.contents, journal.leaf_inputs, strict=True
    ):
        digest(key, content, "sha256")
        leaf = sha256(b"\x00" + leaf_input).digest()
        sha256(b"\x01" + leaf + leaf).digest()


def fetch_only(engine: Engine) -> int:
    with read_snapshot(engine) as conn:
        rows = conn.execution_options(yield_per=10_000).execute(
            select(
                Record.seq,
                Record.kind,
                Record.content,
                Record.commitment,
                Record.previous_leaf_hash,
                Record.leaf_hash,
                Record.batch_id,
                Record.customer_pk,
                Record.id,
                Record.key,
            )
            .where(Record.seq.is_not(None))
            .order_by(Record.seq)
        )
        return sum(1 for _ in rows)


def parse_only(path: Path) -> int:
    decode = json.JSONDecoder().decode
    with path.open("rb") as handle:
        return sum(1 for line in handle if decode(line.decode("utf-8")))


def verify(path: Path, chain: MemoryChain) -> Any:
    with path.open("rb") as handle:
        check, batches = check_bundle_offline(handle)
    asyncio.run(check_bundle_on_chain(check, batches, chain_for=lambda _: chain, contract=None))
    return check


def make_database(url: str | None, directory: Path) -> tuple[Engine, Callable[[], None]]:
    if url is None:
        engine = make_engine(
            f"sqlite:///{directory / 'ledger.sqlite'}", sqlite_synchronous="NORMAL"
        )
        return engine, engine.dispose
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{url}?options=-csearch_path%3D{schema}")

    def drop() -> None:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return engine, drop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--database", help="PostgreSQL URL (default: a fresh SQLite file)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="crm-ledger-bench-audit-") as scratch:
        directory = Path(scratch)
        engine, cleanup = make_database(args.database, directory)
        try:
            upgrade_database(engine)
            print(
                f"building {args.records:,} records, {args.customers:,} customers, batches of "
                f"{args.batch_size:,} on {engine.dialect.name}",
                file=sys.stderr,
            )
            journal, build_seconds = timed(
                "writing the journal",
                lambda: build(
                    engine,
                    records=args.records,
                    customers=args.customers,
                    batch_size=args.batch_size,
                ),
            )
            view = ChainView(
                deployment=DeploymentRecord(1, CHAIN_ID, ADDRESS, GENESIS, CODE_HASH, 1),
                batches=journal.batches,
                batch_count=len(journal.batches),
                head=journal.batches[-1].head,
                next_seq=args.records,
            )
            _, base = timed("baseline: hashlib alone", lambda: baseline(journal))
            _, fetch = timed("fetch: rows only", lambda: fetch_only(engine))
            report, audit = timed("audit", lambda: audit_journal(engine, view))
            assert report.clean, report.to_json()["discrepancies"][:5]
            bundle = directory / "ledger.jsonl"

            def write_bundle() -> None:
                with bundle.open("wb") as handle:
                    for line in open_export(engine, scope=Scope("all"), include_keys=True).lines():
                        handle.write(line)

            _, export = timed("export", write_bundle)
            _, parse = timed("parse: json.loads of every line", lambda: parse_only(bundle))
            check, verified = timed("verify", lambda: verify(bundle, MemoryChain(journal.batches)))
            assert check.ok, check.failures[:5]
            size = bundle.stat().st_size
        finally:
            cleanup()

    n = args.records

    def rate(seconds: float) -> str:
        return f"{n / seconds:>12,.0f}/s"

    print(
        f"\n{n:,} records, {len(journal.batches):,} batches, {engine.dialect.name}, "
        f"Python {sys.version.split()[0]}, one core (pid {os.getpid()})"
    )
    print(f"{'phase':<10} {'seconds':>9} {'records/s':>14} {'x baseline':>11}")
    for name, seconds in (
        ("baseline", base),
        ("fetch", fetch),
        ("audit", audit),
        ("export", export),
        ("parse", parse),
        ("verify", verified),
    ):
        print(f"{name:<10} {seconds:>9.2f} {rate(seconds)} {seconds / base:>10.1f}x")
    print(
        f"(build {build_seconds:.1f} s; bundle {size / 1e6:,.0f} MB, {size / n:.0f} bytes/record)"
    )
    target = 50_000
    for name, seconds in (("audit", audit), ("verify", verified)):
        verdict = "met" if n / seconds >= target else "NOT met"
        print(f"target {name} >= {target:,} records/s: {verdict} ({n / seconds:,.0f}/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
