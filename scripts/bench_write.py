"""CPU per durable single write on the write path alone: combined vs one by one, in one run.

No HTTP, no FastAPI: `--writers` asyncio tasks (16 by default, as bench_api's wrk connections)
each await `api.idempotency.run_write_async` of one `POST /v1/interactions` write after
another, as the handler does, on the service's own engine (`create_app` on a fresh SQLite
journal at synchronous=FULL, or a fresh PostgreSQL database), so the group committer forms
its groups as under load. Two ways, alternately, `--reps` rounds each:

  combined   the handler's write (`routes.records.RecordWrite`): the committer runs the single
             writes of a group as one bulk write (one customer lookup, one multi-row INSERT).
  alone      the same write wrapped so that it is not `Combinable`: one lookup and one INSERT
             per write, as before this change.

For each it prints writes/s and the CPU each write cost the whole process (the event loop and
the committer's threads), the cheapest round of `--reps` (another process's load moves that
far less than the rate), and the ratio combined / alone. `--keys` gives each write its own
Idempotency-Key (a lookup and a stored answer more per write). Writes spread over
`--customers` customers.

Usage:
    python scripts/bench_write.py [--writes 4000] [--reps 5] [--writers 16] [--keys]
                                  [--customers 8] [--only combined|alone]
                                  [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_api import fresh_database
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.idempotency import Idempotency, Written, run_write_async
from crm_ledger.api.routes.records import RecordWrite
from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.db.models import Record
from crm_ledger.journal.customers import create_customer
from crm_ledger.journal.keys import Role, create_api_key, lookup
from crm_ledger.journal.schemas import CustomerCreate, InteractionCreate

MODES = ("combined", "alone")


@dataclass(frozen=True)
class Cost:
    """CPU per write (whole process, microseconds) and writes/s of one round."""

    cpu_us: float
    rate: float


def make_write(payload: InteractionCreate, mode: str) -> Callable[[Session], Written]:
    """The handler's write, or the same write made not `Combinable` (one by one)."""
    write = RecordWrite(payload)
    if mode == "combined":
        return write
    return lambda session: write(session)


async def round_of(args: argparse.Namespace, context: dict[str, Any], mode: str, n: int) -> None:
    """`n` writes by `args.writers` concurrent writers."""
    todo = iter(range(n))
    customers: list[str] = context["customers"]

    async def writer() -> None:
        for i in todo:
            payload = InteractionCreate(
                customer_id=customers[i % len(customers)],
                type="support_call",
                channel="phone",
                occurred_at="2026-11-25T10:00:00Z",
                details={"ticket": i, "topic": "billing"},
            )
            answer = await run_write_async(
                sessions=context["sessions"],
                principal=context["principal"],
                idempotency=Idempotency(
                    key=f"{mode}-{context['round']}-{i}" if args.keys else None,
                    method="POST",
                    path="/v1/interactions",
                ),
                payload=payload,
                status_code=201,
                write=make_write(payload, mode),
            )
            if answer.status_code != 201:
                raise SystemExit(f"the write answered {answer.status_code}: {answer.body!r}")

    await asyncio.gather(*(writer() for _ in range(args.writers)))
    context["round"] += 1


async def measure(args: argparse.Namespace, work: Path, url: str | None) -> dict[str, Cost]:
    """The cheapest round of each mode, the modes alternating."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=work,
        database_url=url or f"sqlite:///{work / 'journal.sqlite3'}",
        run_anchorer=False,
    )
    app = create_app(settings, background=False)
    async with app.router.lifespan_context(app):
        sessions: sessionmaker[Session] = app.state.runtime.session_factory
        with sessions.begin() as session:
            plaintext = create_api_key(session, role=Role.RECORDER, label="bench_write")
            principal = lookup(session, plaintext)
            customers = [
                create_customer(
                    session=session,
                    payload=CustomerCreate(name=f"Bench {n}", email=f"bench{n}@example.com"),
                ).id
                for n in range(args.customers)
            ]
        context: dict[str, Any] = {
            "sessions": sessions,
            "principal": principal,
            "customers": customers,
            "round": 0,
        }
        for mode in args.modes:  # warm up
            await round_of(args, context, mode, max(args.writes // 10, args.writers))
        gc.collect()
        gc.freeze()
        best: dict[str, Cost] = {}
        for _ in range(args.reps):
            for mode in args.modes:
                cpu, wall = time.process_time(), time.perf_counter()
                await round_of(args, context, mode, args.writes)
                cost = Cost(
                    (time.process_time() - cpu) / args.writes * 1e6,
                    args.writes / (time.perf_counter() - wall),
                )
                if mode not in best or cost.cpu_us < best[mode].cpu_us:
                    best[mode] = cost
        expected = len(args.modes) * (
            args.reps * args.writes + max(args.writes // 10, args.writers)
        )
        with sessions() as session:
            written = session.scalar(select(func.count()).select_from(Record))
        if written != expected:
            raise SystemExit(f"{written} records in the journal, {expected} written")
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=4000, help="writes per round")
    parser.add_argument("--reps", type=int, default=5, help="rounds of each mode")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers")
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--keys", action="store_true", help="an Idempotency-Key on every write")
    parser.add_argument("--database-url", help="PostgreSQL server to make a fresh database on")
    parser.add_argument("--only", choices=MODES, help="one way only (to profile it)")
    args = parser.parse_args()
    args.modes = (args.only,) if args.only else MODES
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.database_url) as url:
        best = asyncio.run(measure(args, Path(tmp), url))
    database = "PostgreSQL" if args.database_url else "SQLite (synchronous=FULL)"
    keys = ", each with an Idempotency-Key" if args.keys else ""
    print(
        f"write path alone, {database}, {args.writes} writes x {args.reps}, "
        f"{args.writers} writers{keys}, cheapest round's CPU per write:"
    )
    for mode in args.modes:
        print(f"  {mode:9} {best[mode].cpu_us:7.0f} us  {best[mode].rate:9,.0f} writes/s")
    if args.only:
        return
    combined, alone = best["combined"], best["alone"]
    print(
        f"  ratio     {combined.cpu_us / alone.cpu_us:7.2f}x CPU per write, "
        f"{combined.rate / alone.rate:.2f}x writes/s (combined / alone)"
    )


if __name__ == "__main__":
    sys.exit(main())
