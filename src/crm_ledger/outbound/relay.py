"""The relay worker: the change feed, in order, to a message broker, at least once.

Exports: `FeedRelay`, `load_cursor`, `nats_relay`, `NATS_RELAY`.

The feed is the outbox. The relay's durable cursor (`outbound_cursors`, one row per relay) is
the feed position up to which the broker acknowledged every event. Each `step` reads up to
`batch_size` events after it, hands them to its `Publisher` and commits the cursor past the
acknowledged prefix only. So:

- broker down or slow: nothing is acknowledged, the cursor stays, `BrokerUnavailable` is
  raised and the supervisor backs off; the next step sends the same events again;
- relay killed between the broker's ack and the commit: a fresh relay sends those events
  again. The broker deduplicates them by event id inside its duplicate window; consumers that
  must be exact deduplicate on the event id too (every feed consumer does).

A relay starts from the oldest event the feed retains. If it falls further behind than the
feed's retention (30 days by default) the events it missed are gone: it halts with a message
(`WorkerHalted`) instead of skipping them silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger import feed
from crm_ledger.config import Settings
from crm_ledger.db.models import OutboundCursor, utcnow
from crm_ledger.db.session import reading
from crm_ledger.errors import BrokerUnavailable, WorkerHalted
from crm_ledger.outbound.nats import NatsPublisher
from crm_ledger.outbound.publisher import OutboundMessage, Publisher, messages_after

__all__ = ["NATS_RELAY", "FeedRelay", "load_cursor", "nats_relay"]

log = logging.getLogger(__name__)

#: The worker (and cursor) name of the NATS JetStream relay.
NATS_RELAY = "nats-relay"


def load_cursor(session: Session, name: str) -> int:
    """The feed position relay `name` has delivered through (0: nothing yet)."""
    position = session.scalar(select(OutboundCursor.position).where(OutboundCursor.name == name))
    return int(position or 0)


class FeedRelay:
    """A worker that publishes the change feed to one broker (`name` is also its cursor)."""

    def __init__(
        self,
        *,
        name: str,
        publisher: Publisher,
        session_factory: sessionmaker[Session],
        batch_size: int = 500,
    ) -> None:
        self.name = name
        self.publisher = publisher
        self.session_factory = session_factory
        self.batch_size = batch_size
        # The batch after the one being published, read meanwhile (feed position it follows).
        self._prefetch: tuple[int, asyncio.Future[list[OutboundMessage]]] | None = None

    async def step(self) -> int:
        """Publish the next events after the cursor; returns how many were acknowledged."""
        messages = await self._next_batch()
        if not messages:
            return 0
        # Read the following batch in a thread while this one is published.
        last = messages[-1].position
        self._prefetch = (last, asyncio.ensure_future(asyncio.to_thread(self._read, last)))
        outcome = await self.publisher.publish(messages)
        if outcome.acked:
            await asyncio.to_thread(self.save_cursor, messages[outcome.acked - 1].position)
        if outcome.error is not None:
            await self._drop_prefetch()
            raise BrokerUnavailable(
                f"{self.name}: {outcome.error}; {outcome.acked} of {len(messages)} events "
                "acknowledged, the rest will be sent again"
            )
        return outcome.acked

    async def prepare(self) -> None:
        """Connect to the broker before the first step (the supervisor calls it)."""
        await self.publisher.connect()

    async def close(self) -> None:
        """Close the publisher's connection."""
        await self._drop_prefetch()
        await self.publisher.close()

    async def _next_batch(self) -> list[OutboundMessage]:
        """The prefetched batch when it follows the cursor and is not empty; else a fresh read
        (an empty prefetch may be stale: events may have come since)."""
        position = await asyncio.to_thread(self._load_cursor)
        if self._prefetch is not None:
            after, future = self._prefetch
            self._prefetch = None
            prefetched = await future
            if after == position and prefetched:
                return prefetched
        return await asyncio.to_thread(self._read, position)

    async def _drop_prefetch(self) -> None:
        if self._prefetch is not None:
            _, future = self._prefetch
            self._prefetch = None
            with contextlib.suppress(Exception):
                await future

    def _load_cursor(self) -> int:
        with reading(self.session_factory) as session:
            return load_cursor(session, self.name)

    def save_cursor(self, position: int) -> None:
        """Commit the cursor at `position` (it only ever moves forward)."""
        with self.session_factory.begin() as session:
            row = session.get(OutboundCursor, self.name, with_for_update=True)
            if row is None:
                session.add(OutboundCursor(name=self.name, position=position, updated_at=utcnow()))
            elif row.position < position:
                row.position = position
                row.updated_at = utcnow()

    def _read(self, position: int) -> list[OutboundMessage]:
        with reading(self.session_factory) as session:
            try:
                return messages_after(session, position=position, limit=self.batch_size)
            except feed.CursorExpired as exc:
                raise WorkerHalted(
                    f"{self.name} fell behind the change feed's retention: {exc.detail}; "
                    f"those events are gone (to resume from the oldest retained event, "
                    f"delete the row '{self.name}' of outbound_cursors and restart)"
                ) from None


def nats_relay(*, settings: Settings, session_factory: sessionmaker[Session]) -> FeedRelay:
    """The NATS JetStream relay the settings describe (`CRM_LEDGER_NATS_URL` must be set)."""
    assert settings.nats_url is not None
    publisher = NatsPublisher(
        url=settings.nats_url,
        stream=settings.nats_stream,
        subject_prefix=settings.nats_subject_prefix,
        max_age_seconds=settings.nats_max_age_days * 86_400,
        duplicate_window_seconds=settings.nats_duplicate_window_seconds,
        ack_timeout_seconds=settings.nats_ack_timeout_seconds,
    )
    return FeedRelay(
        name=NATS_RELAY,
        publisher=publisher,
        session_factory=session_factory,
        batch_size=settings.nats_batch_size,
    )
