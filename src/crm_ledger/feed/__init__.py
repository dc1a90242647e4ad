"""The change feed: an ordered, replayable stream of ledger events for downstream CRMs.

Exports: `EventType`, `NewFeedEvent`, `FeedItem`, `FeedPage`, `CursorExpired`, `append`,
`lock_feed`, `read_page`, `encode_cursor`, `decode_cursor`, `prune`, `MAX_PAGE_SIZE`,
`DEFAULT_PAGE_SIZE`.

The feed is the outbox between its writers (the indexer and its reconciler, the webhook
dispatcher) and its readers (`GET /v1/events`, the outbound relays); it imports only `db`, so
every one of them can use it without a package cycle.

Each event has a position (`feed_events.pk`) and an id. Consumers page with
`GET /v1/events?after=<cursor>`, where the cursor is an opaque encoding of the last position
they processed; delivery is at least once (a consumer that crashes before saving its cursor sees
events again), so they deduplicate on `id`.

No gaps, no reordering: positions must become visible in order. SQLite has one writer at a time,
so that holds by itself. On PostgreSQL a sequence hands out numbers before commit, so a
transaction that took position 11 could commit before the one that took 10, and a reader at 11
would never see 10. Every transaction that appends therefore first takes a transaction-scoped
advisory lock (`lock_feed`), before it takes any position, and holds it until it commits:
positions are taken and committed in the same order.

Events derived from the chain are never edited or deleted when a reorg takes their block away
(that would break replay); the indexer appends a compensating event instead
(`record.unanchored`, `reward.retracted`) that names the event it retracts. Events older than
the retention (30 days by default) are pruned; a cursor from before the pruned position is
refused with 410, so a consumer knows it missed events.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import cursors
from crm_ledger.db import bulk
from crm_ledger.db.models import FeedEvent, FeedMark, new_ids, utcnow
from crm_ledger.errors import Gone, Unprocessable
from crm_ledger.schemas import EventType

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "CursorExpired",
    "EventType",
    "FeedItem",
    "FeedPage",
    "NewFeedEvent",
    "append",
    "decode_cursor",
    "encode_cursor",
    "lock_feed",
    "prune",
    "read_page",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
PRUNED_THROUGH = "pruned_through"
#: pg_advisory_xact_lock key of the feed's writers.
FEED_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"crm-ledger: change feed writers").digest()[:8], "big", signed=True
)
_CURSOR_PREFIX = "f1."
_MAX_CURSOR_LENGTH = 40
_MAX_POSITION = 2**63 - 1
_FEED_COLUMNS = (
    "id",
    "type",
    "created_at",
    "customer_id",
    "payload",
    "source_batch_pk",
    "source_token_pk",
)


class CursorExpired(Gone):
    """The events after this cursor were pruned: the consumer has missed some."""


@dataclass(frozen=True, slots=True)
class NewFeedEvent:
    """An event to append; `payload` is its JSON body (or that body encoded already, compact:
    what a writer worked out before its write transaction)."""

    type: EventType
    payload: dict[str, Any] | str
    customer_id: str | None = None
    source_batch_pk: int | None = None
    source_token_pk: int | None = None


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One event as the feed serves it."""

    position: int
    id: str
    type: str
    created_at: datetime
    customer_id: str | None
    data: dict[str, Any]

    @property
    def cursor(self) -> str:
        """The cursor that resumes just after this event."""
        return encode_cursor(self.position)


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Events after a cursor; `next_cursor` resumes after the last one (or where it was)."""

    items: list[FeedItem]
    next_cursor: str
    has_more: bool
    pruned_through: int = field(default=0)


def lock_feed(session: Session) -> None:
    """Take the feed writers' lock for the rest of the session's transaction (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK_KEY})


def append(session: Session, events: Sequence[NewFeedEvent]) -> None:
    """Append `events`, in order, inside the session's transaction.

    Takes the feed lock itself (taking it twice in one transaction is harmless).
    """
    if not events:
        return
    lock_feed(session)
    now = bulk.processed_now(session)
    bulk.insert_rows(
        session,
        "feed_events",
        _FEED_COLUMNS,
        [
            (
                event_id,
                event.type.value,
                now,
                event.customer_id,
                (
                    event.payload
                    if isinstance(event.payload, str)
                    else json.dumps(event.payload, separators=(",", ":"))
                ),
                event.source_batch_pk,
                event.source_token_pk,
            )
            for event_id, event in zip(new_ids(len(events)), events, strict=True)
        ],
    )


def read_page(
    session: Session,
    *,
    after: str | None,
    limit: int = DEFAULT_PAGE_SIZE,
    types: Sequence[str] | None = None,
) -> FeedPage:
    """Up to `limit` events after the cursor `after` (from the oldest retained when None).

    `types` keeps only those event types; the cursor still moves past the others. Raises
    `Unprocessable` for a cursor this feed did not issue or an unknown type, `CursorExpired`
    when events after the cursor were pruned.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise Unprocessable(
            f"limit must be from 1 to {MAX_PAGE_SIZE}, got {limit}",
            errors=[_field_error("limit", f"must be from 1 to {MAX_PAGE_SIZE}")],
        )
    wanted = _check_types(types)
    pruned_through = _pruned_through(session)
    position = decode_cursor(after) if after is not None else pruned_through
    if position < pruned_through:
        raise CursorExpired(
            f"the events right after this cursor are older than the feed's retention and were "
            f"pruned (everything up to position {pruned_through}): this consumer has missed "
            "events. Resync it from GET /v1/crm/customers, then read the feed without `after` "
            "to start from the oldest event still retained.",
            pruned_through=encode_cursor(pruned_through),
        )
    last = session.scalar(select(func.max(FeedEvent.pk)))
    if position > max(int(last or 0), pruned_through):
        raise Unprocessable(
            "cursor is ahead of the feed: it was not issued by this feed (is the service "
            "reading a database restored from an older backup?)",
            errors=[_field_error("after", "ahead of the newest event")],
        )
    query = select(FeedEvent).where(FeedEvent.pk > position).order_by(FeedEvent.pk)
    if wanted is not None:
        query = query.where(FeedEvent.type.in_(wanted))
    rows = list(session.scalars(query.limit(limit + 1)))
    items = [
        FeedItem(
            position=row.pk,
            id=row.id,
            type=row.type,
            created_at=row.created_at,
            customer_id=row.customer_id,
            data=json.loads(row.payload),
        )
        for row in rows[:limit]
    ]
    if items:
        next_position = items[-1].position
    elif wanted is not None:
        # Nothing of these types: skip past what was looked at, so the next call is cheap.
        next_position = max(position, int(last or 0))
    else:
        next_position = position
    return FeedPage(
        items=items,
        next_cursor=encode_cursor(next_position),
        has_more=len(rows) > limit,
        pruned_through=pruned_through,
    )


def encode_cursor(position: int) -> str:
    """Opaque cursor that resumes just after feed position `position`."""
    return cursors.pack_position(position, _CURSOR_PREFIX)


def decode_cursor(cursor: str) -> int:
    """The position inside a cursor from `encode_cursor`; raises `Unprocessable` otherwise."""
    position = cursors.unpack_position(
        cursor, prefix=_CURSOR_PREFIX, maximum=_MAX_POSITION, max_length=_MAX_CURSOR_LENGTH
    )
    if position is None:
        raise Unprocessable(
            "`after` is not a cursor this feed issued: pass the `next_cursor` (or an event's "
            "`cursor`) unchanged, or omit `after` to start from the oldest retained event",
            errors=[_field_error("after", "not a cursor issued by this feed")],
        )
    return position


def prune(session_factory: sessionmaker[Session], *, retention: timedelta) -> int:
    """Delete events older than `retention` and remember the last pruned position."""
    cutoff = utcnow() - retention
    with session_factory.begin() as session:
        lock_feed(session)
        last = session.scalar(select(func.max(FeedEvent.pk)).where(FeedEvent.created_at < cutoff))
        if last is None:
            return 0
        result = session.execute(delete(FeedEvent).where(FeedEvent.pk <= last))
        current = session.get(FeedMark, PRUNED_THROUGH)
        if current is None:
            session.add(FeedMark(name=PRUNED_THROUGH, position=int(last), updated_at=utcnow()))
        elif current.position < last:
            session.execute(
                update(FeedMark)
                .where(FeedMark.name == PRUNED_THROUGH)
                .values(position=int(last), updated_at=utcnow())
            )
        return int(getattr(result, "rowcount", 0))


def _pruned_through(session: Session) -> int:
    position = session.scalar(select(FeedMark.position).where(FeedMark.name == PRUNED_THROUGH))
    return int(position or 0)


def _check_types(types: Sequence[str] | None) -> list[str] | None:
    if types is None:
        return None
    known = {member.value for member in EventType}
    unknown = [name for name in types if name not in known]
    if unknown or not types:
        listed = ", ".join(sorted(known))
        raise Unprocessable(
            f"unknown event type {unknown[0]!r}; types are {listed}"
            if unknown
            else f"`types` is empty; leave it out for every type, or name some of: {listed}",
            errors=[_field_error("types", f"each type must be one of {listed}")],
        )
    return list(dict.fromkeys(types))


def _field_error(field: str, message: str) -> dict[str, str]:
    return {"location": "query", "field": field, "message": message}
