"""The relay worker: the change feed, in order, to a message broker, at least once.

Exports: `FeedRelay`, `load_cursor`, `nats_relay`, `NATS_RELAY`.

The feed is the outbox. The relay's durable cursor (`outbound_cursors`, one row per relay) is
the feed position up to which the broker acknowledged every event. Each `step` reads batches of
up to `batch_size` events after it and sends them through its `Publisher`, the next one written
while the broker acknowledges the ones before (up to `window` batches unacknowledged, up to
`rounds_per_step` batches a step), and commits the cursor past each batch's acknowledged prefix
only, in feed order; a batch that is not wholly acknowledged ends the step. So:

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
from collections import deque

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.crm import feed
from crm_ledger.db.models import OutboundCursor, utcnow
from crm_ledger.errors import BrokerUnavailable, WorkerHalted
from crm_ledger.outbound.nats import NatsPublisher
from crm_ledger.outbound.publisher import (
    OutboundMessage,
    Publisher,
    PublishOutcome,
    messages_after,
)
from crm_ledger.outbound.reading import reading

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
        window: int = 4,
        rounds_per_step: int = 8,
    ) -> None:
        self.name = name
        self.publisher = publisher
        self.session_factory = session_factory
        self.batch_size = batch_size
        self.window = window
        self.rounds_per_step = rounds_per_step
        # The batch the last step read ahead, and the feed position it follows.
        self._prefetch: tuple[int, list[OutboundMessage]] | None = None

    async def step(self) -> int:
        """Publish the next events after the cursor; returns how many were acknowledged.

        Up to `rounds_per_step` batches, up to `window` of them sent and not yet acknowledged
        at a time. While one batch is written the next is read (in a thread), and while the
        broker acknowledges batches the cursor is committed (in a thread) past each one, in
        feed order, once it is acknowledged.
        """
        loop = asyncio.get_running_loop()
        batch, read_after = await self._next_batch()
        in_flight: deque[tuple[list[OutboundMessage], asyncio.Future[PublishOutcome]]] = deque()
        reading: asyncio.Future[list[OutboundMessage]] | None = None
        saving: asyncio.Future[None] | None = None
        acked = sent = 0
        try:
            while in_flight or (batch and sent < self.rounds_per_step):
                if batch and len(in_flight) < self.window and sent < self.rounds_per_step:
                    read_after = batch[-1].position
                    reading = loop.run_in_executor(None, self._read, read_after)
                    # Only the step's first batch may open a connection: a later one must not
                    # overtake, on a new connection, a batch that failed on the old one.
                    outcome = await self.publisher.send(batch, connect=sent == 0)
                    in_flight.append((batch, asyncio.ensure_future(outcome)))
                    sent += 1
                    batch, reading = await reading, None
                    continue
                messages, pending = in_flight.popleft()
                result = await pending
                if result.acked:
                    if saving is not None:
                        await saving
                    position = messages[result.acked - 1].position
                    saving = loop.run_in_executor(None, self.save_cursor, position)
                    acked += result.acked
                if result.error is not None:
                    raise BrokerUnavailable(
                        f"{self.name}: {result.error}; {acked} events acknowledged in this "
                        "step, the rest will be sent again"
                    )
        finally:
            await _abandon([pending for _, pending in in_flight])
            if reading is not None:
                with contextlib.suppress(Exception):
                    await reading
            if saving is not None:
                await saving
        if batch:
            # Read after the last batch sent: where the next step starts, if the cursor is.
            self._prefetch = (read_after, batch)
        return acked

    async def prepare(self) -> None:
        """Connect to the broker before the first step (the supervisor calls it)."""
        await self.publisher.connect()

    async def close(self) -> None:
        """Close the publisher's connection."""
        self._prefetch = None
        await self.publisher.close()

    async def _next_batch(self) -> tuple[list[OutboundMessage], int]:
        """The events after the committed cursor, and that position: the batch the previous
        step read ahead when it follows the cursor, else a fresh read."""
        position = await asyncio.to_thread(self._load_cursor)
        if self._prefetch is not None:
            after, prefetched = self._prefetch
            self._prefetch = None
            if after == position:
                return prefetched, position
        return await asyncio.to_thread(self._read, position), position

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


async def _abandon(outcomes: list[asyncio.Future[PublishOutcome]]) -> None:
    """Stop waiting for batches whose acks no longer matter (a step failed or was cancelled);
    they are sent again from the cursor."""
    for outcome in outcomes:
        outcome.cancel()
    await asyncio.gather(*outcomes, return_exceptions=True)


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
