"""The NATS JetStream publisher: feed events to `<prefix>.<event type>`, deduplicated by id.

Exports: `NatsPublisher`, `ensure_stream`.

Each message carries `Nats-Msg-Id` = the event id, so JetStream drops a copy the relay sends
again inside the stream's duplicate window (after a crash between the broker's ack and the
cursor's commit), and `Nats-Expected-Stream`, so a message some other stream captures is refused
rather than lost. A batch is pipelined: every message is written, then the acks are awaited
together; they are counted in order and the relay only moves past the acknowledged prefix.

The connection never reconnects by itself and never buffers while disconnected (nats-py would
otherwise replay its buffer after a reconnect, after messages whose acks were lost: out of
order). Any failure closes it; the next batch connects afresh. Within one TCP connection the
server receives messages in the order they were written, so a retry from the first
unacknowledged one keeps the stream in feed order.

The stream is created when absent: file storage, limits retention (`max_age` from
`CRM_LEDGER_NATS_MAX_AGE_DAYS`, 7 days by default; oldest discarded first), subjects
`<prefix>.>`, and the duplicate window from `CRM_LEDGER_NATS_DUPLICATE_WINDOW_SECONDS`
(10 minutes by default). An existing stream is used as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig

from crm_ledger.errors import BrokerUnavailable
from crm_ledger.outbound.publisher import OutboundMessage, PublishOutcome

__all__ = ["NatsPublisher", "ensure_stream"]

log = logging.getLogger(__name__)

_DAY = 86_400.0


def _redacted(url: str) -> str:
    """The URL without user info (a NATS URL may carry a user and password or a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


async def ensure_stream(
    js: JetStreamContext,
    *,
    stream: str,
    subject_prefix: str,
    max_age_seconds: float,
    duplicate_window_seconds: float,
) -> None:
    """Create the stream when it does not exist (an existing one is left as it is)."""
    try:
        await js.stream_info(stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        max_age=max_age_seconds,
        duplicate_window=duplicate_window_seconds,
        description="crm-ledger change feed (Nats-Msg-Id = event id)",
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        # Another relay process created it between the lookup and here.
        await js.stream_info(stream)
    log.info("created JetStream stream %s for %s.>", stream, subject_prefix)


class NatsPublisher:
    """Publishes to one JetStream stream over one connection it opens when first needed."""

    def __init__(
        self,
        *,
        url: str,
        stream: str,
        subject_prefix: str,
        max_age_seconds: float = 7 * _DAY,
        duplicate_window_seconds: float = 600.0,
        ack_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 2.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.max_age_seconds = max_age_seconds
        self.duplicate_window_seconds = duplicate_window_seconds
        self.ack_timeout_seconds = ack_timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.destination = f"JetStream stream {stream} at {_redacted(url)}"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    def subject(self, event_type: str) -> str:
        """The subject of an event type: `<prefix>.<type>` (e.g. crm-ledger.record.anchored)."""
        return f"{self.subject_prefix}.{event_type}"

    async def connect(self) -> None:
        """Connect and make sure the stream exists; raises `BrokerUnavailable`."""
        try:
            await self._connect()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await self.close()
            raise BrokerUnavailable(f"cannot reach {self.destination}: {exc!r}") from None

    async def publish(self, messages: Sequence[OutboundMessage]) -> PublishOutcome:
        """Publish in order; the outcome counts the acknowledged prefix."""
        if not messages:
            return PublishOutcome(acked=0)
        try:
            js = await self._connect()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await self.close()
            return PublishOutcome(acked=0, error=f"cannot reach {self.destination}: {exc!r}")
        futures: list[asyncio.Future[PubAck]] = []
        error: str | None = None
        try:
            for message in messages:
                futures.append(
                    await js.publish_async(
                        self.subject(message.type),
                        message.body,
                        stream=self.stream,
                        headers={"Nats-Msg-Id": message.id},
                    )
                )
        except (OSError, nats.errors.Error) as exc:
            error = f"publishing to {self.destination} failed: {exc!r}"
        if futures:
            await asyncio.wait(futures, timeout=self.ack_timeout_seconds)
        acked = 0
        for future in futures:
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            acked += 1
        if acked < len(messages):
            failed = futures[acked] if acked < len(futures) else None
            if failed is not None and failed.done() and not failed.cancelled():
                error = f"{self.destination} refused a message: {failed.exception()!r}"
            elif error is None:
                error = (
                    f"{self.destination} did not acknowledge within {self.ack_timeout_seconds:g} s"
                )
            for future in futures:
                if not future.done():
                    future.cancel()
            await self.close()
        return PublishOutcome(acked=acked, error=error)

    async def close(self) -> None:
        """Close the connection, if open."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (TimeoutError, OSError, nats.errors.Error):
                log.debug("closing the NATS connection failed", exc_info=True)

    async def _connect(self) -> JetStreamContext:
        if self._nc is not None and self._nc.is_connected and self._js is not None:
            return self._js
        await self.close()

        async def quiet(exc: Exception) -> None:
            log.debug("NATS connection error: %r", exc)

        nc = await nats.connect(
            self.url,
            allow_reconnect=False,
            # nats-py retries the first connect too: once more, soon, then give up (the
            # supervisor's back-off is the retry policy).
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            connect_timeout=max(1, round(self.connect_timeout_seconds)),
            error_cb=quiet,
            name="crm-ledger relay",
        )
        self._nc = nc
        js = nc.jetstream(timeout=self.ack_timeout_seconds, publish_async_max_pending=4000)
        await ensure_stream(
            js,
            stream=self.stream,
            subject_prefix=self.subject_prefix,
            max_age_seconds=self.max_age_seconds,
            duplicate_window_seconds=self.duplicate_window_seconds,
        )
        self._js = js
        return js
