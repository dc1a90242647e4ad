"""The webhook worker against receivers on 127.0.0.1: Standard Webhooks signatures checked by
the `standardwebhooks` verifier, retries on 500 and on timeouts, the schedule running out,
auto-pause with its `subscription.paused` event, replay, SSRF refusals at delivery time
(DNS rebinding included), a slow receiver not stalling a fast one, and a worker killed
mid-delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from crm_ledger import feed
from crm_ledger.db.models import FeedEvent, WebhookDelivery, WebhookSubscription
from crm_ledger.feed import EventType
from crm_ledger.outbound.webhooks import subscriptions as service
from crm_ledger.outbound.webhooks.dispatcher import WebhookDispatcher, WebhookPolicy, retry_delay
from crm_ledger.outbound.webhooks.schemas import WebhookSubscriptionCreate
from crm_ledger.outbound.webhooks.secrets import new_signing_secret
from crm_ledger.outbound.webhooks.subscriptions import SubscriptionStatus
from tests.outbound.conftest import Receiver, write_events

ALL_TYPES = [EventType.RECORD_ANCHORED.value, EventType.REWARD_ISSUED.value]
FAST_RETRIES = (0.05, 0.05, 0.05, 0.05, 0.05)


def subscribe(
    session_factory: sessionmaker[Session],
    url: str,
    *,
    types: Sequence[str] = (EventType.RECORD_ANCHORED.value, EventType.REWARD_ISSUED.value),
) -> tuple[str, str]:
    """A subscription's id and secret (created as the API does, without its URL check)."""
    secret = new_signing_secret()
    with session_factory.begin() as session:
        created = service.create_subscription(
            session=session,
            payload=WebhookSubscriptionCreate(url=url, event_types=list(types)),
            secret=secret,
        )
        return created.id, secret


def dispatcher(session_factory: sessionmaker[Session], **policy: object) -> WebhookDispatcher:
    settings: dict[str, object] = {
        "allow_private_urls": True,
        "timeout_seconds": 2.0,
        "retry_schedule_seconds": FAST_RETRIES,
        "auto_pause_failures": 1000,
    }
    settings.update(policy)
    return WebhookDispatcher(
        session_factory=session_factory,
        policy=WebhookPolicy(**settings),  # type: ignore[arg-type]
        rng=random.Random(7),
    )


async def run_until(
    worker: WebhookDispatcher, done: Callable[[], bool], *, timeout: float = 15.0
) -> None:
    """Step `worker` until `done()`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the dispatcher did not get there in time"
        if await worker.step() == 0:
            await asyncio.sleep(0.02)


def deliveries(session_factory: sessionmaker[Session]) -> list[WebhookDelivery]:
    with session_factory() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.pk)))


def subscription(
    session_factory: sessionmaker[Session], subscription_id: str
) -> WebhookSubscription:
    with session_factory() as session:
        found = session.scalar(
            select(WebhookSubscription).where(WebhookSubscription.id == subscription_id)
        )
        assert found is not None
        return found


def statuses(session_factory: sessionmaker[Session]) -> list[str]:
    return [d.status for d in deliveries(session_factory)]


@pytest.mark.asyncio
async def test_each_event_arrives_signed_as_the_standardwebhooks_verifier_accepts(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    _, secret = subscribe(session_factory, receiver.url("/hooks"))
    # Events of a type it did not subscribe to are not sent.
    write_events(session_factory, 6)
    worker = dispatcher(session_factory)
    try:
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"] * 4)
    finally:
        await worker.close()

    with session_factory() as session, session.begin():
        items = feed.read_page(session, after=None, limit=100).items
    wanted = [item for item in items if item.type in ALL_TYPES]
    got = receiver.on("/hooks")
    assert len(got) == 4
    verifier = Webhook(secret)
    for request, item in zip(
        sorted(got, key=lambda r: r.headers["webhook-id"]),
        sorted(wanted, key=lambda i: i.id),
        strict=True,
    ):
        body = verifier.verify(request.body, request.headers)
        assert request.headers["webhook-id"] == item.id
        assert request.headers["webhook-signature"].startswith("v1,")
        assert body["type"] == item.type
        assert body["data"]["id"] == item.id and body["data"]["data"] == item.data
        assert body["data"]["cursor"] == item.cursor
    # A forged body does not verify.
    with pytest.raises(Exception, match="No matching signature"):
        verifier.verify(got[0].body.replace(b"record", b"rec0rd"), got[0].headers)
    assert all(d.attempts == 1 and d.last_response_code == 200 for d in deliveries(session_factory))


@pytest.mark.asyncio
async def test_a_500_is_retried_on_schedule_until_the_receiver_takes_it(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    subscribe(session_factory, receiver.url("/flaky"))
    write_events(session_factory, 1)
    receiver.fail_first["/flaky"] = 2
    worker = dispatcher(session_factory)
    try:
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"])
    finally:
        await worker.close()
    got = receiver.on("/flaky")
    assert len(got) == 3
    assert len({r.headers["webhook-id"] for r in got}) == 1  # the same message each time
    # The waits follow the schedule (0.05 s ± 20%), not hammering the receiver.
    assert all(later.at - earlier.at >= 0.035 for earlier, later in itertools.pairwise(got))
    (delivery,) = deliveries(session_factory)
    assert delivery.attempts == 3 and delivery.last_response_code == 200


@pytest.mark.asyncio
async def test_a_timeout_is_a_failed_attempt_and_is_retried(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    subscribe(session_factory, receiver.url("/slow"))
    write_events(session_factory, 1)
    receiver.hold["/slow"] = asyncio.Event()  # no answer until the test says so
    worker = dispatcher(session_factory, timeout_seconds=0.3)
    try:
        await run_until(worker, lambda: [d.attempts for d in deliveries(session_factory)] == [1])
        (delivery,) = deliveries(session_factory)
        assert delivery.status == "pending"
        assert delivery.last_error == "no answer within 0.3 s"
        receiver.hold["/slow"].set()
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"])
    finally:
        receiver.hold["/slow"].set()
        await worker.close()
    (delivery,) = deliveries(session_factory)
    # Every request the receiver saw was an attempt, the last one answered.
    assert delivery.attempts == len(receiver.on("/slow")) >= 2
    assert delivery.last_response_code == 200


@pytest.mark.asyncio
async def test_when_the_schedule_runs_out_the_delivery_fails_and_redelivery_sends_it_again(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    subscription_id, _ = subscribe(session_factory, receiver.url("/down"))
    write_events(session_factory, 1)
    receiver.status["/down"] = 503
    worker = dispatcher(session_factory, retry_schedule_seconds=(0.02, 0.02))
    try:
        await run_until(worker, lambda: statuses(session_factory) == ["failed"])
        assert len(receiver.on("/down")) == 3  # the first attempt and two retries
        receiver.status["/down"] = 204
        with session_factory.begin() as session:
            service.redeliver(
                session=session,
                subscription_id=subscription_id,
                delivery_id=deliveries(session_factory)[0].id,
            )
        await run_until(worker, lambda: statuses(session_factory) == ["failed", "succeeded"])
    finally:
        await worker.close()
    first, again = receiver.on("/down")[0], receiver.on("/down")[-1]
    assert first.headers["webhook-id"] == again.headers["webhook-id"]


@pytest.mark.asyncio
async def test_a_run_of_failures_pauses_the_subscription_and_says_so_in_the_feed(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    subscription_id, _ = subscribe(session_factory, receiver.url("/broken"))
    write_events(session_factory, 4)
    receiver.status["/broken"] = 500
    worker = dispatcher(session_factory, auto_pause_failures=3)
    try:
        await run_until(
            worker,
            lambda: subscription(session_factory, subscription_id).status == "paused",
        )
        sent = len(receiver.on("/broken"))
        # Paused: nothing more is attempted.
        for _ in range(10):
            await worker.step()
            await asyncio.sleep(0.02)
        assert len(receiver.on("/broken")) == sent
        paused = subscription(session_factory, subscription_id)
        assert (
            paused.paused_reason is not None
            and "3 failed attempts in a row" in paused.paused_reason
        )
        with session_factory() as session:
            events = list(
                session.scalars(
                    select(FeedEvent).where(FeedEvent.type == EventType.SUBSCRIPTION_PAUSED.value)
                )
            )
        assert len(events) == 1
        assert json.loads(events[0].payload)["subscription_id"] == subscription_id

        # Resumed with a healthy receiver: everything that waited is delivered.
        receiver.status["/broken"] = 200
        with session_factory.begin() as session:
            service.set_status(
                session=session,
                subscription_id=subscription_id,
                status=SubscriptionStatus.ACTIVE,
                reason=None,
            )
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"] * 3)
    finally:
        await worker.close()


@pytest.mark.asyncio
async def test_replay_from_a_cursor_delivers_the_later_events_again(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    subscription_id, _ = subscribe(
        session_factory, receiver.url("/replay"), types=[EventType.RECORD_ANCHORED.value]
    )
    write_events(session_factory, 12)  # record.anchored are 0, 3, 6, 9
    worker = dispatcher(session_factory)
    try:
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"] * 4)
        first = [json.loads(r.body)["data"] for r in receiver.on("/replay")]
        by_n = sorted(first, key=lambda event: event["data"]["n"])
        with session_factory.begin() as session:
            service.replay(
                session=session, subscription_id=subscription_id, after=by_n[1]["cursor"]
            )
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"] * 6)
    finally:
        await worker.close()
    again = [json.loads(r.body)["data"]["data"]["n"] for r in receiver.on("/replay")[4:]]
    assert sorted(again) == [6, 9]


@pytest.mark.asyncio
async def test_private_addresses_are_refused_at_delivery_time_even_after_dns_changes(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    subscribe(session_factory, receiver.url("/inside"))
    subscribe(session_factory, f"http://hooks.example.test:{receiver.port}/rebound")
    write_events(session_factory, 1)

    async def rebinding(
        host: str, port: int
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        # The name looked public when the subscription was made; now it points inside.
        return [ipaddress.ip_address("127.0.0.1")]

    worker = dispatcher(session_factory, allow_private_urls=False)
    worker.resolver = rebinding
    try:
        await run_until(
            worker, lambda: [d.attempts > 0 for d in deliveries(session_factory)] == [True, True]
        )
    finally:
        await worker.close()
    assert receiver.received == []
    errors = sorted(d.last_error or "" for d in deliveries(session_factory))
    assert errors[0].startswith("refused: 127.0.0.1 resolves to 127.0.0.1 is a loopback")
    assert errors[1].startswith("refused: hooks.example.test resolves to 127.0.0.1 is a loopback")


@pytest.mark.asyncio
async def test_a_slow_receiver_does_not_stall_a_fast_one(
    session_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    slow_id, _ = subscribe(session_factory, receiver.url("/slow"))
    subscribe(session_factory, receiver.url("/fast"))
    receiver.hold["/slow"] = asyncio.Event()  # answers only when the test says so
    write_events(session_factory, 30)  # 20 per subscription
    worker = dispatcher(
        session_factory, timeout_seconds=60.0, max_concurrency=8, max_per_subscription=2
    )
    try:
        await run_until(worker, lambda: len(receiver.on("/fast")) == 20, timeout=30)
        # Every fast delivery went through while the slow receiver still holds its first two:
        # it got its two slots and no more.
        assert len(receiver.on("/slow")) == 2
        slow_pk = subscription(session_factory, slow_id).pk
        slow = [d for d in deliveries(session_factory) if d.subscription_pk == slow_pk]
        assert [d.attempts for d in slow] == [0] * 20
        receiver.hold["/slow"].set()
        await run_until(worker, lambda: statuses(session_factory) == ["succeeded"] * 40, timeout=30)
    finally:
        receiver.hold["/slow"].set()
        await worker.close()


@pytest.mark.asyncio
async def test_a_worker_killed_mid_delivery_leaves_it_due_and_a_fresh_one_sends_it_again(
    session_factory: sessionmaker[Session], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribe(session_factory, receiver.url("/hooks"))
    write_events(session_factory, 1)
    first = dispatcher(session_factory)

    def killed(*args: object) -> None:
        raise RuntimeError("killed after the receiver answered, before the result was stored")

    monkeypatch.setattr(first, "_record_all", killed)
    with pytest.raises(RuntimeError, match="killed after the receiver answered"):
        await run_until(first, lambda: False)
    assert len(receiver.on("/hooks")) == 1
    await first.close()
    (delivery,) = deliveries(session_factory)
    assert delivery.status == "pending" and delivery.attempts == 0

    fresh = dispatcher(session_factory)
    try:
        await run_until(fresh, lambda: statuses(session_factory) == ["succeeded"])
    finally:
        await fresh.close()
    got = receiver.on("/hooks")
    assert len(got) == 2 and got[0].headers["webhook-id"] == got[1].headers["webhook-id"]


def test_the_default_schedule_spans_about_a_day_with_jitter() -> None:
    schedule = WebhookPolicy().retry_schedule_seconds
    assert 24 * 3600 <= sum(schedule) <= 30 * 3600
    rng = random.Random(1)
    waits = [retry_delay(schedule, n, rng) for n in range(1, len(schedule) + 2)]
    assert waits[-1] is None
    for wait, base in zip(waits, schedule, strict=False):
        assert wait is not None and 0.8 * base <= wait <= 1.2 * base
