"""Benchmark: the ledger audit and bundle verification over a large journal, on one core.

Run with `.venv/bin/python scripts/bench_audit.py [--records N] [--database URL]`. It builds a
journal of N records (default 1,000,000; 10,000 customers, batches of 2,000) in a fresh SQLite
file (or a fresh schema of the PostgreSQL database at --database), anchors every batch on a
fresh in-memory Anvil, then, in one run:

  baseline   the raw cost of the hashing an audit cannot avoid, with hashlib/hmac alone over
             the same bytes already in memory: HMAC-SHA256 of each content, SHA-256 of each
             leaf input, and the tree's node hashes (one per leaf)
  fetch      streaming the audit's columns of every record from the database, doing nothing
  chain      `read_chain`: what the ledger audit asks the node (every BatchAnchored event,
             batchCount, head, nextSeq, the deployment check)
  audit      `audit_journal`: the ledger audit of every record against those answers
  export     `open_export(...).lines()` of the whole ledger to a file
  parse      JSON decoding of every line of that file, doing nothing else
  verify     `verify_bundle` of that file against the node: everything `crm-ledger verify`
             does, chain included

and prints records/s for each and their ratios to the baseline. docs/benchmarks.md ("## Audit")
records what it printed. Target: audit and verify at >= 50,000 records/s (1M in <= 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchlib import free_port
from sqlalchemy import Engine, bindparam, create_engine, insert, select, text, update

from crm_ledger.audit.chain import read_only_chain
from crm_ledger.audit.export import open_export
from crm_ledger.audit.ledger import audit_journal, read_chain, read_deployment
from crm_ledger.audit.snapshot import read_snapshot
from crm_ledger.chain.client import LedgerChain, make_async_web3
from crm_ledger.chain.node import start_anvil
from crm_ledger.chain.signer import dev_account
from crm_ledger.db.models import Batch, BatchStatus, Customer, Deployment, Record, utcnow
from crm_ledger.db.session import make_engine, upgrade_database
from crm_ledger.journal.receipts import AUDIT_LEDGER
from crm_ledger.ledger import merkle
from crm_ledger.verifier.bundle import Scope
from crm_ledger.verifier.check import verify_bundle

T = TypeVar("T")


@dataclass(frozen=True)
class Journal:
    """What was written, kept in memory for the baseline."""

    contents: list[bytes]
    keys: list[bytes]
    leaf_inputs: list[bytes]
    batches: int


def build(
    engine: Engine,
    chain: LedgerChain,
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    *,
    records: int,
    customers: int,
    batch_size: int,
) -> Journal:
    """Write `records` records of `customers` customers, anchoring each batch on `chain`."""
    now = utcnow()
    customer_ids = [str(uuid.uuid4()) for _ in range(customers)]
    keys = [secrets.token_bytes(32) for _ in range(customers)]
    tips = [merkle.ZERO_HASH] * customers
    contents: list[bytes] = []
    record_keys: list[bytes] = []
    leaf_inputs: list[bytes] = []
    head = merkle.ZERO_HASH
    deployed = run(chain.deploy_ledger(epoch=1))
    chain = chain.at(deployed.address)
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
                chain_id=run(chain.chain_id()),
                genesis_hash=run(chain.genesis_hash()),
                address=deployed.address,
                code_hash=deployed.code_hash,
                tx_hash=deployed.tx_hash,
                block_number=deployed.block_number,
                deployed_at=now,
            )
        )
    batches = 0
    for batch_id, first in enumerate(range(0, records, batch_size)):
        count = min(batch_size, records - first)
        rows = []
        leaves = []
        for seq in range(first, first + count):
            who = seq % customers
            record_id = str(uuid.uuid4())
            # Sorted keys, no spaces, ASCII strings, small integers: RFC 8785 exactly.
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
        anchored = run(chain.wait_for_receipt(run(chain.send_anchor(first, count, root)), 60))
        assert anchored is not None and anchored.head == head
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
                    tx_hash=anchored.tx_hash,
                    block_number=anchored.block_number,
                    block_hash=anchored.block_hash,
                    created_at=now,
                )
            )
            conn.execute(insert(Record), rows)
        batches += 1
        print(f"\r  built and anchored {first + count:,} records", end="", file=sys.stderr)
    print(file=sys.stderr)
    with engine.begin() as conn:
        conn.execute(
            update(Customer)
            .where(Customer.pk == bindparam("b_pk"))
            .values(last_leaf_hash=bindparam("b_tip")),
            [{"b_pk": i + 1, "b_tip": tips[i]} for i in range(customers)],
        )
    with engine.connect() as conn:
        # As autovacuum would have by now on a journal this size: the planner needs sizes.
        conn.execute(text("ANALYZE"))
        conn.commit()
    return Journal(contents, record_keys, leaf_inputs, batches)


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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--database", help="PostgreSQL URL (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    n = args.records
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete

    with tempfile.TemporaryDirectory(prefix="crm-ledger-bench-audit-") as scratch:
        directory = Path(scratch)
        engine, cleanup = make_database(args.database, directory)
        node = start_anvil(port=free_port(), state_path=None)
        w3 = make_async_web3(node.rpc_url, 30.0)
        try:
            upgrade_database(engine)
            print(
                f"building {n:,} records, {args.customers:,} customers, batches of "
                f"{args.batch_size:,} on {engine.dialect.name}, anchored on Anvil",
                file=sys.stderr,
            )
            journal, build_seconds = timed(
                "writing and anchoring the journal",
                lambda: build(
                    engine,
                    LedgerChain(w3, dev_account(0), None),
                    run,
                    records=n,
                    customers=args.customers,
                    batch_size=args.batch_size,
                ),
            )
            deployment = read_deployment(engine)
            assert deployment is not None
            reader = read_only_chain(w3, deployment.address)
            _, base = timed("baseline: hashlib alone", lambda: baseline(journal))
            _, fetch = timed("fetch: rows only", lambda: fetch_only(engine))
            view, chain_seconds = timed(
                "chain: what the audit asks the node", lambda: run(read_chain(reader, deployment))
            )
            report, audit = timed("audit", lambda: audit_journal(engine, view))
            assert report.clean, report.to_json()["discrepancies"][:5]
            bundle = directory / "ledger.jsonl"

            def write_bundle() -> None:
                with bundle.open("wb") as handle:
                    for line in open_export(engine, scope=Scope("all"), include_keys=True).lines():
                        handle.write(line)

            _, export = timed("export", write_bundle)
            _, parse = timed("parse: JSON decoding of every line", lambda: parse_only(bundle))
            check, verified = timed(
                "verify (offline and on chain)",
                lambda: run(
                    verify_bundle(
                        bundle,
                        chain_for=lambda address: read_only_chain(w3, address),
                        contract=deployment.address,
                    )
                ),
            )
            assert check.ok, check.failures[:5]
            assert check.batches_on_chain == journal.batches
            size = bundle.stat().st_size
        finally:
            run(w3.provider.disconnect())
            node.stop()
            cleanup()
            loop.close()

    print(
        f"\n{n:,} records, {journal.batches:,} batches of {args.batch_size:,}, "
        f"{args.customers:,} customers, {engine.dialect.name}, Python {sys.version.split()[0]}"
    )
    print(f"{'phase':<10} {'seconds':>9} {'records/s':>14} {'x baseline':>11}")
    for name, seconds in (
        ("baseline", base),
        ("fetch", fetch),
        ("chain", chain_seconds),
        ("audit", audit),
        ("export", export),
        ("parse", parse),
        ("verify", verified),
    ):
        print(f"{name:<10} {seconds:>9.2f} {n / seconds:>12,.0f}/s {seconds / base:>10.1f}x")
    print(
        f"(build {build_seconds:.0f} s; bundle {size / 1e6:,.0f} MB, {size / n:.0f} bytes/record)"
    )
    target = 50_000
    for name, seconds in (("audit", chain_seconds + audit), ("verify", verified)):
        verdict = "met" if n / seconds >= target else "NOT met"
        print(
            f"target {name} >= {target:,} records/s: {verdict} "
            f"({n / seconds:,.0f}/s, {seconds:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
