"""GET /v1/events: replay from any cursor with no gaps or reordering, filters, retention, bad
cursors; and concurrent writers never let a reader skip an event."""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.db.models import FeedEvent, utcnow
from crm_ledger.feed import EventType, NewFeedEvent
from crm_ledger.journal.keys import Role
from tests.api.helpers import problem
from tests.apps import TestClient

TYPES = [EventType.RECORD_ANCHORED, EventType.REWARD_ISSUED, EventType.DRIFT_DETECTED]


def write(session_factory: sessionmaker[Session], count: int, *, start: int = 0) -> None:
    """`count` events, a few per transaction, types taking turns."""
    n = start
    while n < start + count:
        with session_factory.begin() as session:
            batch = [
                NewFeedEvent(type=TYPES[i % len(TYPES)], payload={"n": i})
                for i in range(n, min(n + 3, start + count))
            ]
            feed.append(session, batch)
        n += len(batch)


def page(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/v1/events", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def read_all(
    client: TestClient, headers: dict[str, str], *, after: str | None = None, **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = after
    while True:
        body = page(client, headers, **params, **({"after": cursor} if cursor else {}))
        items += body["items"]
        if not body["has_more"]:
            return items
        cursor = body["next_cursor"]


def test_the_feed_replays_from_any_cursor_with_no_gaps_and_no_reordering(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    write(app_sessions, 40)
    everything = read_all(client, headers[Role.RECORDER], limit=7)
    assert [item["data"]["n"] for item in everything] == list(range(40))
    assert len({item["id"] for item in everything}) == 40
    for position, item in enumerate(everything):
        for size in (1, 6, 1000):
            rest = read_all(client, headers[Role.RECORDER], after=item["cursor"], limit=size)
            assert [r["id"] for r in rest] == [e["id"] for e in everything[position + 1 :]]
    # Reading again gives the same events, ids and cursors: replayable.
    assert read_all(client, headers[Role.AUDITOR], limit=40) == everything


def test_next_cursor_stays_put_when_nothing_is_new(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    empty = page(client, headers[Role.MARKETING])
    assert empty["items"] == [] and empty["has_more"] is False
    write(app_sessions, 2)
    first = page(client, headers[Role.MARKETING], after=empty["next_cursor"])
    assert [item["data"]["n"] for item in first["items"]] == [0, 1]
    idle = page(client, headers[Role.MARKETING], after=first["next_cursor"])
    assert idle["items"] == [] and idle["next_cursor"] == first["next_cursor"]
    write(app_sessions, 1, start=2)
    later = page(client, headers[Role.MARKETING], after=idle["next_cursor"])
    assert [item["data"]["n"] for item in later["items"]] == [2]


def test_types_keep_only_those_events_and_the_cursor_moves_past_the_rest(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    write(app_sessions, 12)
    drifts = read_all(client, headers[Role.ADMIN], types="drift.detected", limit=2)
    assert [item["data"]["n"] for item in drifts] == [2, 5, 8, 11]
    both = read_all(client, headers[Role.ADMIN], types="drift.detected,reward.issued")
    assert [item["data"]["n"] for item in both] == [1, 2, 4, 5, 7, 8, 10, 11]
    skipped = page(client, headers[Role.ADMIN], types="reward.expired")
    assert skipped["items"] == []
    assert feed.decode_cursor(skipped["next_cursor"]) == feed.decode_cursor(
        read_all(client, headers[Role.ADMIN])[-1]["cursor"]
    )


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"after": "not-a-cursor"}, 422, "after"),
        ({"after": feed.encode_cursor(5)[:-1]}, 422, "after"),
        ({"after": "ZjEuMDU"}, 422, "after"),  # "f1.05": not the canonical form
        ({"after": feed.encode_cursor(10_000)}, 422, "after"),
        ({"types": "record.deleted"}, 422, "types"),
        ({"types": ","}, 422, "types"),
        ({"limit": 0}, 422, "limit"),
        ({"limit": 1001}, 422, "limit"),
    ],
)
def test_bad_cursors_types_and_limits_get_a_clear_4xx(
    client: TestClient,
    app_sessions: sessionmaker[Session],
    headers: dict[Role, dict[str, str]],
    params: dict[str, Any],
    status: int,
    field: str,
) -> None:
    write(app_sessions, 3)
    body = problem(client.get("/v1/events", headers=headers[Role.ADMIN], params=params), status)
    assert field in {error["field"] for error in body["errors"]}, body


def test_events_older_than_the_retention_are_pruned_and_their_cursors_refused(
    client: TestClient, app_sessions: sessionmaker[Session], headers: dict[Role, dict[str, str]]
) -> None:
    write(app_sessions, 10)
    everything = read_all(client, headers[Role.ADMIN])
    old = [item["id"] for item in everything[:6]]
    with app_sessions.begin() as session:
        session.execute(
            update(FeedEvent)
            .where(FeedEvent.id.in_(old))
            .values(created_at=utcnow() - timedelta(days=31))
        )
    assert feed.prune(app_sessions, retention=timedelta(days=30)) == 6
    assert feed.prune(app_sessions, retention=timedelta(days=30)) == 0

    expired = problem(
        client.get(
            "/v1/events", headers=headers[Role.ADMIN], params={"after": everything[2]["cursor"]}
        ),
        410,
    )
    assert "missed events" in expired["detail"]
    assert expired["pruned_through"] == everything[5]["cursor"]
    # From the pruned position on, and from the start, the rest is intact.
    rest = read_all(client, headers[Role.ADMIN], after=everything[5]["cursor"])
    assert [item["id"] for item in rest] == [item["id"] for item in everything[6:]]
    assert read_all(client, headers[Role.ADMIN]) == everything[6:]


def test_the_feed_needs_a_key(client: TestClient) -> None:
    problem(client.get("/v1/events"), 401)


def test_concurrent_writers_never_let_a_reader_skip_an_event(
    app_sessions: sessionmaker[Session],
) -> None:
    """Writers hold their transaction open for a while after taking positions; a reader polling
    meanwhile must still see every event, in position order (the feed lock's job)."""
    writers, per_writer = 4, 15
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(per_writer):
                with app_sessions.begin() as session:
                    feed.append(
                        session,
                        [NewFeedEvent(type=EventType.RECORD_ANCHORED, payload={"w": seed, "n": n})],
                    )
                    time.sleep(rng.uniform(0, 0.01))
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        cursor: str | None = None
        try:
            while True:
                # Read before deciding: a page read after every writer finished that brings
                # nothing new is the end.
                writers_done = stop.is_set()
                with app_sessions() as session:
                    got = feed.read_page(session, after=cursor, limit=5)
                seen.extend(item.position for item in got.items)
                cursor = got.next_cursor
                if writers_done and not got.items:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join(timeout=30)
    assert not errors, errors
    with app_sessions() as session:
        everything = [
            item.position for item in feed.read_page(session, after=None, limit=1000).items
        ]
    assert len(everything) == writers * per_writer
    assert seen == everything
