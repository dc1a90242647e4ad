"""CPU per request of the API's own request path, in-process, against a bare FastAPI app.

`bench_api.py` measures what a client sees through uvicorn and wrk, which on a shared 2-core
machine moves by tens of percent from run to run. This one calls both ASGI apps directly (no
server, no sockets), 16 requests in flight, and reports the CPU time each request cost: the
whole process's (the group committer's thread included) and the event loop's thread alone,
each the lowest of `--reps` repetitions, so another process's load moves it far less. The
ratio is bare / service: the share of its CPU the service would need to give up to answer as
cheaply as the bare app (uvicorn's own cost per request, about the same on both sides, is not
in either).

  service   `create_app` on a fresh SQLite journal (synchronous=FULL) or PostgreSQL database,
            no background workers, `POST /v1/interactions` (or `/batch` with `--batch N`).
  bare      `bench_api_bare:app`, the same request models, nothing else.

`--no-write` replaces the durable write by an immediate answer (`api.writes.run_write_async`
patched in this process): what the request path costs around the write.

Usage:
    python scripts/bench_request_path.py [--requests 3000] [--reps 5] [--batch 1000]
                                         [--no-write] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_api import fresh_database
from starlette.responses import Response

CONCURRENCY = 16


def scope(path: str, key: str, body: bytes) -> dict[str, Any]:
    """An HTTP scope as uvicorn makes it, for a JSON POST with a bearer key."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }


async def call(app: Any, request: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    """One request through `app`: its status and body."""
    status, chunks, sent = 0, [], False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(dict(request), receive, send)
    return status, b"".join(chunks)


@dataclass(frozen=True)
class Cost:
    """CPU per request (process and event-loop thread, microseconds) and requests/s."""

    process_us: float
    loop_us: float
    rate: float


async def measure(app: Any, request: dict[str, Any], body: bytes, n: int, reps: int) -> Cost:
    """The cheapest of `reps` rounds of `n` requests, 16 in flight."""

    async def round_of(count: int) -> None:
        todo = iter(range(count))

        async def client() -> None:
            for _ in todo:
                status, answer = await call(app, request, body)
                if status != 201:
                    raise SystemExit(f"the app answered {status}: {answer[:300]!r}")

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))

    await round_of(max(n // 10, CONCURRENCY))  # warm up
    gc.collect()
    gc.freeze()
    best: Cost | None = None
    for _ in range(reps):
        cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
        await round_of(n)
        cost = Cost(
            (time.process_time() - cpu) / n * 1e6,
            (time.thread_time() - loop_cpu) / n * 1e6,
            n / (time.perf_counter() - wall),
        )
        best = cost if best is None or cost.process_us < best.process_us else best
    assert best is not None
    return best


def interaction_body(customer: str, batch: int) -> tuple[str, bytes]:
    """The path and body of the request every round sends."""
    item = {
        "customer_id": customer,
        "type": "support_call",
        "channel": "phone",
        "occurred_at": "2026-11-25T10:00:00Z",
        "details": {"ticket": 0, "topic": "billing"},
    }
    if not batch:
        return "/v1/interactions", json.dumps(item).encode()
    items = [{**item, "details": {"ticket": n}} for n in range(batch)]
    return "/v1/interactions/batch", json.dumps({"items": items}).encode()


async def service_cost(args: argparse.Namespace, work: Path) -> Cost:
    """The service's cost per request, on a fresh journal."""
    from crm_ledger.app import create_app
    from crm_ledger.config import Settings
    from crm_ledger.journal.keys import Role, create_api_key

    with fresh_database(args.database_url) as url:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=work,
            database_url=url or f"sqlite:///{work / 'journal.sqlite3'}",
            run_anchorer=False,
            # The limiter still runs on every request, as in `bench_api`; it never refuses here.
            rate_limit_recorder=1e9,
        )
        app = create_app(settings, background=False)
        if args.no_write:
            import crm_ledger.api.writes as writes

            async def answer_at_once(**_: Any) -> Response:
                return Response(b'{"id":"-"}', status_code=201, media_type="application/json")

            writes.run_write_async = answer_at_once  # type: ignore[assignment]
        async with app.router.lifespan_context(app):
            with app.state.runtime.session_factory.begin() as session:
                key = create_api_key(session, role=Role.RECORDER, label="bench_request_path")
            customer_body = json.dumps({"name": "Bench", "email": "bench@example.com"}).encode()
            status, answer = await call(
                app, scope("/v1/customers", key, customer_body), customer_body
            )
            if status != 201:
                raise SystemExit(f"could not create the customer: {status} {answer[:300]!r}")
            path, body = interaction_body(json.loads(answer)["id"], args.batch)
            return await measure(app, scope(path, key, body), body, args.requests, args.reps)


async def bare_cost(args: argparse.Namespace) -> Cost:
    """The bare app's cost per request."""
    from bench_api_bare import app

    path, body = interaction_body(str(uuid.uuid4()), args.batch)
    return await measure(app, scope(path, "x", body), body, args.requests, args.reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="items per batch (0: single POST)")
    parser.add_argument("--no-write", action="store_true", help="the write answers at once")
    parser.add_argument("--database-url", help="PostgreSQL server to make a fresh database on")
    args = parser.parse_args()
    if args.batch:
        args.requests = max(args.requests // args.batch * 10, 2 * CONCURRENCY)
    with tempfile.TemporaryDirectory() as tmp:
        service = asyncio.run(service_cost(args, Path(tmp)))
    bare = asyncio.run(bare_cost(args))
    per = f"per request of {args.batch} items" if args.batch else "per request"
    what = "request path without the write" if args.no_write else "request path with the write"
    print(f"{what}, {args.requests} requests x {args.reps}, {CONCURRENCY} in flight, CPU {per}:")
    print(
        f"  service  {service.process_us:9.0f} us (event loop {service.loop_us:.0f} us), "
        f"{service.rate:,.0f}/s"
    )
    print(f"  bare     {bare.process_us:9.0f} us, {bare.rate:,.0f}/s")
    print(f"  ratio    {bare.process_us / service.process_us:9.1%} (bare / service)")


if __name__ == "__main__":
    sys.exit(main())
