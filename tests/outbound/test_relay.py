"""The NATS JetStream relay against a real server: subjects, Nats-Msg-Id, bodies as the feed
serves them, the stream it creates, the broker down, the relay killed between ack and commit,
and 10,000 events through a broker killed and restarted mid-run."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import nats
import pytest
from nats.js.api import RetentionPolicy
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.crm.schemas import FeedEventPublic
from crm_ledger.errors import BrokerUnavailable, WorkerHalted
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.outbound.nats import NatsPublisher
from crm_ledger.outbound.relay import NATS_RELAY, FeedRelay, load_cursor
from tests.outbound.conftest import (
    SHARED_NATS_URL,
    PrivateNats,
    feed_ids,
    free_port,
    read_stream,
    write_events,
)


def make_relay(
    session_factory: sessionmaker[Session],
    *,
    url: str,
    stream: str,
    prefix: str,
    batch_size: int = 10,
) -> FeedRelay:
    publisher = NatsPublisher(
        url=url,
        stream=stream,
        subject_prefix=prefix,
        max_age_seconds=3600,
        duplicate_window_seconds=300,
        ack_timeout_seconds=2,
        connect_timeout_seconds=1,
    )
    return FeedRelay(
        name=NATS_RELAY, publisher=publisher, session_factory=session_factory, batch_size=batch_size
    )


async def drain(relay: FeedRelay) -> int:
    """Step until the relay is idle; the total acknowledged."""
    total = 0
    while handled := await relay.step():
        total += handled
    return total


def cursor_of(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return load_cursor(session, NATS_RELAY)


@pytest.mark.asyncio
async def test_every_event_reaches_its_subject_in_feed_order_with_its_id(
    session_factory: sessionmaker[Session], shared_stream: str, subject_prefix: str
) -> None:
    write_events(session_factory, 25)
    relay = make_relay(
        session_factory, url=SHARED_NATS_URL, stream=shared_stream, prefix=subject_prefix
    )
    try:
        assert await drain(relay) == 25
        assert await relay.step() == 0
    finally:
        await relay.close()

    with session_factory() as session, session.begin():
        items = feed.read_page(session, after=None, limit=100).items
    stored = await read_stream(SHARED_NATS_URL, shared_stream)
    assert [m.msg_id for m in stored] == [item.id for item in items]
    assert [m.subject for m in stored] == [f"{subject_prefix}.{item.type}" for item in items]
    # The body is the event exactly as GET /v1/events serves it, nothing added.
    for message, item in zip(stored, items, strict=True):
        assert message.body == FeedEventPublic(
            id=item.id,
            cursor=item.cursor,
            type=item.type,
            created_at=format_timestamp(item.created_at),
            customer_id=item.customer_id,
            data=item.data,
        ).model_dump(mode="json")
    assert cursor_of(session_factory) == items[-1].position

    nc = await nats.connect(SHARED_NATS_URL)
    try:
        config = (await nc.jetstream().stream_info(shared_stream)).config
    finally:
        await nc.close()
    assert config.subjects == [f"{subject_prefix}.>"]
    assert config.duplicate_window == 300
    assert config.max_age == 3600
    assert config.retention == RetentionPolicy.LIMITS


@pytest.mark.asyncio
async def test_broker_down_keeps_the_cursor_and_the_relay_catches_up(
    session_factory: sessionmaker[Session], shared_stream: str, subject_prefix: str
) -> None:
    write_events(session_factory, 12)
    down = make_relay(
        session_factory,
        url=f"nats://127.0.0.1:{free_port()}",
        stream=shared_stream,
        prefix=subject_prefix,
    )
    with pytest.raises(BrokerUnavailable, match="cannot reach JetStream stream"):
        await down.step()
    assert cursor_of(session_factory) == 0

    relay = make_relay(
        session_factory, url=SHARED_NATS_URL, stream=shared_stream, prefix=subject_prefix
    )
    try:
        assert await drain(relay) == 12
    finally:
        await relay.close()
    assert [m.msg_id for m in await read_stream(SHARED_NATS_URL, shared_stream)] == feed_ids(
        session_factory
    )


@pytest.mark.asyncio
async def test_relay_killed_between_ack_and_commit_resends_and_the_broker_drops_the_copies(
    session_factory: sessionmaker[Session],
    shared_stream: str,
    subject_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_events(session_factory, 30)
    first = make_relay(
        session_factory, url=SHARED_NATS_URL, stream=shared_stream, prefix=subject_prefix
    )
    assert await first.step() == 10

    def killed(position: int) -> None:
        raise KeyboardInterrupt("killed after the broker's ack, before the cursor's commit")

    monkeypatch.setattr(first, "save_cursor", killed)
    with pytest.raises(KeyboardInterrupt):
        await first.step()
    await first.close()
    ids = feed_ids(session_factory)
    # The broker has events 0..19; the durable cursor says 0..9.
    assert [m.msg_id for m in await read_stream(SHARED_NATS_URL, shared_stream)] == ids[:20]
    assert cursor_of(session_factory) == positions(session_factory)[9]

    fresh = make_relay(
        session_factory, url=SHARED_NATS_URL, stream=shared_stream, prefix=subject_prefix
    )
    try:
        assert await drain(fresh) == 20  # 10 sent again (acked as duplicates) and 10 new
    finally:
        await fresh.close()
    assert [m.msg_id for m in await read_stream(SHARED_NATS_URL, shared_stream)] == ids


@pytest.mark.asyncio
async def test_ten_thousand_events_through_a_broker_restart_and_a_relay_kill_arrive_once_in_order(
    session_factory: sessionmaker[Session], private_nats: PrivateNats, subject_prefix: str
) -> None:
    stream = "CRM_LEDGER_TEST"
    total = 10_000
    write_events(session_factory, total // 2)
    # The other half is written while the relay runs.
    writer = threading.Thread(
        target=write_events, args=(session_factory, total // 2), kwargs={"start": total // 2}
    )
    writer.start()

    def relay() -> FeedRelay:
        return make_relay(
            session_factory,
            url=private_nats.url,
            stream=stream,
            prefix=subject_prefix,
            batch_size=500,
        )

    current = relay()
    failures = 0
    broker_restarted = relay_killed = False
    try:
        while True:
            acked = cursor_of(session_factory)
            if not broker_restarted and acked >= 3000:
                private_nats.kill()
                broker_restarted = True
                with pytest.raises(BrokerUnavailable):
                    await current.step()
                failures += 1
                private_nats.start()
                continue
            if not relay_killed and acked >= 6000:
                # Killed mid-step: the batch is being published when the task is cancelled.
                task = asyncio.create_task(current.step())
                await asyncio.sleep(0.005)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await current.close()
                current = relay()
                relay_killed = True
                continue
            writing = writer.is_alive()
            try:
                handled = await current.step()
            except BrokerUnavailable:
                failures += 1
                await asyncio.sleep(0.1)
                continue
            if handled == 0 and not writing:
                break
    finally:
        await current.close()
        writer.join()

    assert broker_restarted and relay_killed and failures >= 1
    ids = feed_ids(session_factory)
    assert len(ids) == total
    stored = await read_stream(private_nats.url, stream)
    seen: list[str] = []
    unique: set[str] = set()
    for message in stored:
        if message.msg_id not in unique:
            unique.add(message.msg_id)
            seen.append(message.msg_id)
    assert seen == ids
    assert cursor_of(session_factory) == positions(session_factory)[-1]


def positions(session_factory: sessionmaker[Session]) -> list[int]:
    """Every feed position, in order."""
    items: list[int] = []
    cursor: str | None = None
    with session_factory() as session, session.begin():
        while True:
            page = feed.read_page(session, after=cursor, limit=feed.MAX_PAGE_SIZE)
            items += [item.position for item in page.items]
            if not page.has_more:
                return items
            cursor = page.next_cursor


@pytest.mark.asyncio
async def test_a_relay_behind_the_feeds_retention_halts_instead_of_skipping(
    session_factory: sessionmaker[Session], subject_prefix: str
) -> None:
    write_events(session_factory, 5)
    feed.prune(session_factory, retention=timedelta(0))
    write_events(session_factory, 2, start=5)
    relay = make_relay(session_factory, url=SHARED_NATS_URL, stream="UNUSED", prefix=subject_prefix)
    with pytest.raises(WorkerHalted, match="fell behind the change feed's retention"):
        await relay.step()
    assert cursor_of(session_factory) == 0
