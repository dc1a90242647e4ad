"""Benchmark: change-feed events relayed to NATS JetStream and delivered as signed webhooks.

Run with `.venv/bin/python scripts/bench_outbound.py [--events N] [--rate R] [--seconds S]
[--webhooks W] [--nats-url URL] [--database-url URL]`. Needs a NATS server with JetStream
(default nats://127.0.0.1:4222); its streams are made for the run and deleted after. With a
PostgreSQL URL each phase makes a schema `bench_outbound_*` of its own (left for inspection). Prints
the figures; docs/benchmarks.md ("Outbound") records what it printed.

Phases, all in one run:
  relay     N events appended to a fresh journal, then the NATS relay drains them (batches of
            500, each acknowledged before the cursor moves). Baseline: a bare nats-py loop
            publishing the same N bodies with the same headers to a stream of its own,
            pipelined the same way (publish_async, then wait for every ack).
  lag       R events per second appended for S seconds (a writer thread, one transaction per
            10 ms) while the relay runs under a supervisor polling as the service's does (an idle
            worker steps again after CRM_LEDGER_ANCHOR_POLL_SECONDS, 0.05 s) and
            a JetStream consumer receives them: lag = receipt time - the event's created_at,
            p50 / p99.
  webhooks  W events delivered to a local aiohttp receiver by the webhook worker (default
            policy: 64 deliveries in flight, 16 per subscription), to 1 subscription and then
            to 8 subscriptions (8 W deliveries). Baseline: W bare aiohttp POSTs of a body of the
            same size to the same receiver, 16 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import nats
from aiohttp import web
from benchlib import free_port, percentile, unix_time
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.config import Settings
from crm_ledger.db.models import WebhookDelivery
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.feed import EventType, NewFeedEvent
from crm_ledger.journal.privacy import KeyRing, attach_keyring
from crm_ledger.outbound.nats import NatsPublisher
from crm_ledger.outbound.publisher import message_for
from crm_ledger.outbound.relay import NATS_RELAY, FeedRelay
from crm_ledger.outbound.webhooks import subscriptions
from crm_ledger.outbound.webhooks.dispatcher import WebhookDispatcher, WebhookPolicy
from crm_ledger.outbound.webhooks.schemas import WebhookSubscriptionCreate
from crm_ledger.outbound.webhooks.secrets import new_signing_secret
from crm_ledger.workers import Supervisor

TYPES = [EventType.RECORD_ANCHORED, EventType.REWARD_ISSUED]


def append(session_factory: sessionmaker[Session], count: int, *, per_tx: int = 1000) -> None:
    """`count` events shaped like the indexer's record.anchored / reward.issued ones."""
    done = 0
    while done < count:
        size = min(per_tx, count - done)
        with session_factory.begin() as session:
            feed.append(
                session,
                [
                    NewFeedEvent(
                        type=TYPES[i % 2],
                        customer_id=str(uuid.uuid4()),
                        payload={
                            "record_id": str(uuid.uuid4()),
                            "kind": "interaction",
                            "seq": done + i,
                            "batch_id": (done + i) // 2000,
                            "epoch": 1,
                        },
                    )
                    for i in range(size)
                ],
            )
        done += size


def fresh_journal(database_url: str | None, tmp: Path) -> sessionmaker[Session]:
    """An empty, migrated journal: a new SQLite file, or a new schema of `database_url`."""
    url = f"sqlite:///{tmp / f'{uuid.uuid4().hex}.sqlite'}"
    if database_url is not None:
        schema = f"bench_outbound_{uuid.uuid4().hex[:8]}"
        admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        separator = "&" if "?" in database_url else "?"
        url = f"{database_url}{separator}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    attach_keyring(engine, KeyRing.generate())  # sealed signing secrets need a master key
    upgrade_database(engine)
    return make_session_factory(engine)


async def delete_streams(url: str, names: list[str]) -> None:
    nc = await nats.connect(url)
    try:
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


async def relay_phase(url: str, events: int, database_url: str | None, tmp: Path) -> None:
    sessions = fresh_journal(database_url, tmp)
    append(sessions, events)
    with sessions() as session, session.begin():
        items = []
        cursor = None
        while True:
            page = feed.read_page(session, after=cursor, limit=feed.MAX_PAGE_SIZE)
            items += page.items
            if not page.has_more:
                break
            cursor = page.next_cursor
    messages = [message_for(item) for item in items]
    stream, bare = f"BENCH_{uuid.uuid4().hex[:8]}", f"BENCH_BARE_{uuid.uuid4().hex[:8]}"
    try:
        # Baseline: the bare pipelined publish loop, same bodies, same headers.
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=bare, subjects=[f"bare-{bare.lower()}.>"])
        start = time.perf_counter()
        for offset in range(0, len(messages), 500):
            futures = [
                await js.publish_async(
                    f"bare-{bare.lower()}.{m.type}",
                    m.body,
                    stream=bare,
                    headers={"Nats-Msg-Id": m.id},
                )
                for m in messages[offset : offset + 500]
            ]
            await asyncio.gather(*futures)
        bare_rate = len(messages) / (time.perf_counter() - start)
        await nc.close()

        publisher = NatsPublisher(url=url, stream=stream, subject_prefix=f"bench-{stream.lower()}")
        relay = FeedRelay(name=NATS_RELAY, publisher=publisher, session_factory=sessions)
        await publisher.connect()
        start = time.perf_counter()
        relayed = 0
        while handled := await relay.step():
            relayed += handled
        relay_rate = relayed / (time.perf_counter() - start)
        await relay.close()
    finally:
        await delete_streams(url, [stream, bare])
    print(
        f"relay     {relayed} events: relay {relay_rate:,.0f} events/s, bare nats-py "
        f"publish loop {bare_rate:,.0f} msgs/s ({relay_rate / bare_rate:.0%} of it)"
    )


async def lag_phase(
    url: str, rate: int, seconds: float, database_url: str | None, tmp: Path
) -> None:
    sessions = fresh_journal(database_url, tmp)
    stream = f"BENCH_LAG_{uuid.uuid4().hex[:8]}"
    prefix = f"bench-{stream.lower()}"
    publisher = NatsPublisher(url=url, stream=stream, subject_prefix=prefix)
    # Polled as `crm-ledger serve` polls its workers (CRM_LEDGER_ANCHOR_POLL_SECONDS).
    supervisor = Supervisor(engine=None, idle_seconds=Settings().anchor_poll_seconds)
    supervisor.add(
        FeedRelay(name=NATS_RELAY, publisher=publisher, session_factory=sessions), singleton=False
    )
    lags: list[float] = []
    total = int(rate * seconds)
    nc = await nats.connect(url)
    try:
        await publisher.connect()
        js = nc.jetstream()
        done = asyncio.Event()

        async def received(msg: nats.aio.msg.Msg) -> None:
            lags.append(time.time() - unix_time(json.loads(msg.data)["created_at"]))
            if len(lags) >= total:
                done.set()

        await js.subscribe(
            f"{prefix}.>",
            stream=stream,
            cb=received,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.NEW),
        )
        await supervisor.start()

        def writer() -> None:
            per_tick = max(1, rate // 100)
            start = time.monotonic()
            for tick in range(total // per_tick):
                delay = start + tick / 100 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                append(sessions, per_tick, per_tx=per_tick)

        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.to_thread(thread.join)
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        await supervisor.stop()
        await nc.close()
        await delete_streams(url, [stream])
    print(
        f"lag       {len(lags)} events at {rate}/s for {seconds:g} s: feed → JetStream "
        f"consumer p50 {percentile(lags, 50) * 1000:.0f} ms, p99 "
        f"{percentile(lags, 99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
    )


async def webhook_phase(events: int, database_url: str | None, tmp: Path) -> None:
    received = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        received += 1
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        # Baseline: bare aiohttp POSTs (the worker's client) of a same-sized body, 16 at a time.
        body = b"x" * 420
        async with aiohttp.ClientSession() as client:
            gate = asyncio.Semaphore(16)

            async def post(n: int) -> None:
                async with gate, client.post(f"http://127.0.0.1:{port}/bare", data=body):
                    pass

            start = time.perf_counter()
            await asyncio.gather(*(post(n) for n in range(events)))
            bare_rate = events / (time.perf_counter() - start)
        print(f"webhooks  baseline: bare aiohttp POST loop, 16 in flight: {bare_rate:,.0f} posts/s")
        for subscribers in (1, 8):
            sessions = fresh_journal(database_url, tmp)
            with sessions.begin() as session:
                for n in range(subscribers):
                    subscriptions.create_subscription(
                        session=session,
                        payload=WebhookSubscriptionCreate(
                            url=f"http://127.0.0.1:{port}/s{n}",
                            event_types=[t.value for t in TYPES],
                        ),
                        secret=new_signing_secret(),
                    )
            append(sessions, events)
            worker = WebhookDispatcher(
                session_factory=sessions,
                policy=WebhookPolicy(allow_private_urls=True),
            )
            wanted = events * subscribers
            start = time.perf_counter()
            while done_count(sessions) < wanted:
                await worker.step()
            elapsed = time.perf_counter() - start
            await worker.close()
            print(
                f"webhooks  {wanted} deliveries to {subscribers} subscription(s): "
                f"{wanted / elapsed:,.0f} deliveries/s"
            )
    finally:
        await runner.cleanup()


def done_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return len(
            session.scalars(
                select(WebhookDelivery.pk).where(WebhookDelivery.status == "succeeded")
            ).all()
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await relay_phase(args.nats_url, args.events, args.database_url, Path(tmp))
        await lag_phase(args.nats_url, args.rate, args.seconds, args.database_url, Path(tmp))
        await webhook_phase(args.webhooks, args.database_url, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
