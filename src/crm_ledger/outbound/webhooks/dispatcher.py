"""The webhook worker: turns change-feed events into deliveries and delivers them, signed.

Exports: `WebhookDispatcher`, `WebhookPolicy`, `Attempt`, `retry_delay`, `sign_headers`,
`WEBHOOKS`.

Each `step`:

1. record every attempt that ended since the last step, in one transaction (one commit per
   step, not per delivery), while the deliveries in flight go on;
2. fan out: for every active subscription, the feed events after its cursor (of its types)
   become `webhook_deliveries` rows and the cursor moves past them, in one transaction;
3. launch due deliveries (pending, `next_attempt_at` passed, subscription active) as tasks, at
   most `max_concurrency` at a time and `max_per_subscription` per subscription, so a slow or
   dead receiver holds a few slots and never the others';
4. wait until one in flight finishes (at most 0.2 s).

A delivery is an HTTP POST of `{"type", "timestamp", "data"}` (data: the event as
`GET /v1/events` serves it) with the Standard Webhooks headers `webhook-id` (the event id,
the same on every attempt and redelivery: receivers deduplicate on it), `webhook-timestamp`
and `webhook-signature` (`v1,<base64 HMAC-SHA256>`, plus a second signature with the previous
secret for a day after a rotation). Any 2xx is success. Anything else, a timeout
(`timeout_seconds` for the whole exchange), a refused connection, a redirect or an address
refused by the SSRF check (done again here, after resolution; the request then goes to the
checked address) is a failed attempt, retried after the schedule's next wait with ±20%
jitter; after the last one the delivery is `failed`. A subscription whose attempts fail
`auto_pause_failures` times in a row is paused, and a `subscription.paused` event is appended
to the feed.

At least once: a delivery's row is updated only after its attempt ends. A worker killed
mid-attempt leaves it pending and due; the next worker sends it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from crm_ledger import feed
from crm_ledger.config import Settings
from crm_ledger.db.models import FeedEvent, WebhookDelivery, WebhookSubscription, new_id, utcnow
from crm_ledger.db.session import reading
from crm_ledger.feed import EventType, NewFeedEvent
from crm_ledger.journal.privacy import KeyRing, keyring_of
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.outbound.publisher import message_for
from crm_ledger.outbound.webhooks import urls
from crm_ledger.outbound.webhooks.secrets import unseal
from crm_ledger.outbound.webhooks.subscriptions import DeliveryStatus, SubscriptionStatus

__all__ = [
    "WEBHOOKS",
    "Attempt",
    "WebhookDispatcher",
    "WebhookPolicy",
    "retry_delay",
    "sign_headers",
]

log = logging.getLogger(__name__)

#: The worker's name (and its singleton lock's).
WEBHOOKS = "webhooks"
_FAN_OUT_BATCH = 500
_JITTER = 0.2
_WAIT_SECONDS = 0.2
_USER_AGENT = "crm-ledger-webhooks/1"

Resolver = Callable[[str, int], Awaitable[list[urls.IPAddress]]]
_DELIVERIES = cast(Table, WebhookDelivery.__table__)
# A delivery deleted meanwhile (with its subscription) matches no row: nothing to record.
_RECORD_SUCCESS = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.pk == bindparam("b_pk"),
        _DELIVERIES.c.status == DeliveryStatus.PENDING.value,
    )
    .values(
        status=DeliveryStatus.SUCCEEDED.value,
        attempts=_DELIVERIES.c.attempts + 1,
        last_attempt_at=bindparam("b_at"),
        last_response_code=bindparam("b_code"),
        last_error=None,
        next_attempt_at=None,
    )
)


@dataclass(frozen=True)
class WebhookPolicy:
    """How deliveries are made and retried (see `Settings` for the defaults)."""

    allow_private_urls: bool = False
    timeout_seconds: float = 10.0
    max_concurrency: int = 64
    max_per_subscription: int = 16
    retry_schedule_seconds: Sequence[float] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    auto_pause_failures: int = 50

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        """The policy the settings describe."""
        return cls(
            allow_private_urls=settings.webhook_allow_private_urls,
            timeout_seconds=settings.webhook_timeout_seconds,
            max_concurrency=settings.webhook_max_concurrency,
            max_per_subscription=settings.webhook_max_per_subscription,
            retry_schedule_seconds=tuple(settings.webhook_retry_schedule_seconds),
            auto_pause_failures=settings.webhook_auto_pause_failures,
        )


@dataclass(frozen=True)
class Attempt:
    """How one attempt went: a response code, or an error (never both None)."""

    response_code: int | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        """A 2xx answer."""
        return (
            self.error is None
            and self.response_code is not None
            and (200 <= self.response_code < 300)
        )


@dataclass(frozen=True)
class _Job:
    delivery_pk: int
    subscription_pk: int
    url: str
    message_id: str
    payload: str
    secrets: tuple[str, ...]


@dataclass
class _InFlight:
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    per_subscription: dict[int, int] = field(default_factory=dict)


def retry_delay(schedule: Sequence[float], attempts: int, rng: random.Random) -> float | None:
    """Seconds to wait after the `attempts`-th failed attempt, jittered; None: give up."""
    if attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return base * rng.uniform(1 - _JITTER, 1 + _JITTER)


def sign_headers(
    *, message_id: str, payload: str, secrets: Sequence[str], at: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, one signature per secret."""
    signatures = " ".join(Webhook(secret).sign(message_id, at, payload) for secret in secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }


class WebhookDispatcher:
    """The `webhooks` worker (see the module docstring)."""

    name = WEBHOOKS

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        policy: WebhookPolicy,
        resolver: Resolver = urls.resolve,
        rng: random.Random | None = None,
    ) -> None:
        self.session_factory = session_factory
        # The master key ring attached to the journal's engine, read when first needed.
        self._keyring: KeyRing | None = None
        self.policy = policy
        self.resolver = resolver
        self.rng = rng or random.Random()
        self._client: aiohttp.ClientSession | None = None
        self._in_flight = _InFlight()
        # Attempts that ended, waiting to be recorded (all in one transaction per step).
        self._results: list[tuple[_Job, Attempt]] = []
        self._recording: set[int] = set()

    @classmethod
    def from_settings(
        cls, *, settings: Settings, session_factory: sessionmaker[Session]
    ) -> WebhookDispatcher:
        """The worker the settings describe."""
        return cls(
            session_factory=session_factory,
            policy=WebhookPolicy.from_settings(settings),
        )

    async def step(self) -> int:
        """Fan out new events, launch due deliveries, wait a little for some to finish."""
        # Recording runs in a thread while the deliveries in flight go on in the loop.
        recorded = await self._flush()
        fanned = await asyncio.to_thread(self._fan_out)
        launched = await self._launch_due()
        if self._in_flight.tasks:
            await asyncio.wait(
                list(self._in_flight.tasks.values()),
                timeout=_WAIT_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
        return fanned + launched + recorded

    async def prepare(self) -> None:
        """Load the master key ring (the supervisor halts the worker if it is bad)."""
        if self._keyring is None:
            self._keyring = await asyncio.to_thread(self._engine_keyring)

    def _engine_keyring(self) -> KeyRing:
        with self.session_factory() as session:
            return keyring_of(session)

    async def close(self) -> None:
        """Let deliveries in flight finish (each is bounded by the timeout), then close."""
        tasks = list(self._in_flight.tasks.values())
        if tasks:
            await asyncio.wait(tasks)
        await self._flush()
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def in_flight(self) -> int:
        """Deliveries being attempted right now."""
        return len(self._in_flight.tasks)

    def report(self) -> dict[str, object]:
        """Extra `/readyz` fields."""
        return {"in_flight": self.in_flight}

    # 1. fan out ---------------------------------------------------------------------------

    def _fan_out(self) -> int:
        with reading(self.session_factory) as session:
            head = session.scalar(select(func.max(FeedEvent.pk)))
            behind = list(
                session.scalars(
                    select(WebhookSubscription.pk).where(
                        WebhookSubscription.status == SubscriptionStatus.ACTIVE.value,
                        WebhookSubscription.position < int(head or 0),
                    )
                )
            )
        if not behind:
            return 0  # no write transaction when there is nothing to fan out
        created = 0
        with self.session_factory.begin() as session:
            subscriptions = list(
                session.scalars(
                    select(WebhookSubscription)
                    .where(
                        WebhookSubscription.pk.in_(behind),
                        WebhookSubscription.status == SubscriptionStatus.ACTIVE.value,
                    )
                    .order_by(WebhookSubscription.pk)
                    .with_for_update()
                )
            )
            for subscription in subscriptions:
                created += self._fan_out_one(session, subscription)
        return created

    def _fan_out_one(self, session: Session, subscription: WebhookSubscription) -> int:
        try:
            page = feed.read_page(
                session,
                after=feed.encode_cursor(subscription.position),
                limit=_FAN_OUT_BATCH,
                types=list(subscription.event_types),
            )
        except feed.CursorExpired as exc:
            log.error(
                "webhook subscription %s fell behind the feed's retention; events were "
                "pruned before they were delivered: %s",
                subscription.id,
                exc.detail,
            )
            page = feed.read_page(
                session, after=None, limit=_FAN_OUT_BATCH, types=list(subscription.event_types)
            )
        now = utcnow()
        for item in page.items:
            event = json.loads(message_for(item).body)
            session.add(
                WebhookDelivery(
                    id=new_id(),
                    subscription_pk=subscription.pk,
                    message_id=item.id,
                    event_type=item.type,
                    feed_position=item.position,
                    payload=json.dumps(
                        {"type": item.type, "timestamp": event["created_at"], "data": event},
                        separators=(",", ":"),
                    ),
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        position = feed.decode_cursor(page.next_cursor)
        if position > subscription.position:
            subscription.position = position
        return len(page.items)

    # 2. launch ----------------------------------------------------------------------------

    async def _launch_due(self) -> int:
        free = self.policy.max_concurrency - len(self._in_flight.tasks)
        if free <= 0:
            return 0
        jobs = await asyncio.to_thread(self._due, free)
        for job in jobs:
            self._in_flight.tasks[job.delivery_pk] = asyncio.create_task(
                self._run(job), name=f"webhook delivery {job.delivery_pk}"
            )
            counts = self._in_flight.per_subscription
            counts[job.subscription_pk] = counts.get(job.subscription_pk, 0) + 1
        return len(jobs)

    def _due(self, free: int) -> list[_Job]:
        busy = set(self._in_flight.tasks) | self._recording
        counts = dict(self._in_flight.per_subscription)
        chosen: list[tuple[int, int]] = []
        with reading(self.session_factory) as session:
            candidates = session.execute(
                select(WebhookDelivery.pk, WebhookDelivery.subscription_pk)
                .join(
                    WebhookSubscription, WebhookSubscription.pk == WebhookDelivery.subscription_pk
                )
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING.value,
                    WebhookDelivery.next_attempt_at <= utcnow(),
                    WebhookSubscription.status == SubscriptionStatus.ACTIVE.value,
                )
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.pk)
                .limit(free + len(busy) + self.policy.max_concurrency * 4)
            ).all()
            for delivery_pk, subscription_pk in candidates:
                if len(chosen) >= free:
                    break
                if delivery_pk in busy:
                    continue
                if counts.get(subscription_pk, 0) >= self.policy.max_per_subscription:
                    continue
                counts[subscription_pk] = counts.get(subscription_pk, 0) + 1
                chosen.append((delivery_pk, subscription_pk))
            if not chosen:
                return []
            bodies = {
                pk: (message_id, payload)
                for pk, message_id, payload in session.execute(
                    select(
                        WebhookDelivery.pk, WebhookDelivery.message_id, WebhookDelivery.payload
                    ).where(WebhookDelivery.pk.in_([pk for pk, _ in chosen]))
                )
            }
            now = utcnow()
            subscriptions = {
                sub.pk: (sub.url, self._secrets(sub, now))
                for sub in session.scalars(
                    select(WebhookSubscription).where(
                        WebhookSubscription.pk.in_({sub_pk for _, sub_pk in chosen})
                    )
                )
            }
        return [
            _Job(
                delivery_pk=delivery_pk,
                subscription_pk=subscription_pk,
                url=subscriptions[subscription_pk][0],
                message_id=bodies[delivery_pk][0],
                payload=bodies[delivery_pk][1],
                secrets=subscriptions[subscription_pk][1],
            )
            for delivery_pk, subscription_pk in chosen
            if delivery_pk in bodies and subscription_pk in subscriptions
        ]

    def _secrets(self, subscription: WebhookSubscription, now: datetime) -> tuple[str, ...]:
        if self._keyring is None:
            # Read when first needed: a process that never delivers never touches the key.
            self._keyring = self._engine_keyring()
        keyring = self._keyring
        current = unseal(subscription.secret, keyring=keyring, subscription_id=subscription.id)
        if (
            subscription.previous_secret is not None
            and subscription.previous_secret_expires_at is not None
            and subscription.previous_secret_expires_at > now
        ):
            previous = unseal(
                subscription.previous_secret, keyring=keyring, subscription_id=subscription.id
            )
            return (current, previous)
        return (current,)

    # 3. attempt and record ----------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        self._recording.add(job.delivery_pk)
        try:
            attempt = await self._attempt(job)
            self._results.append((job, attempt))
        except Exception:  # one delivery's bug must not stop the others; it stays due
            log.exception("webhook delivery %s failed unexpectedly", job.delivery_pk)
            self._recording.discard(job.delivery_pk)
        finally:
            self._in_flight.tasks.pop(job.delivery_pk, None)
            counts = self._in_flight.per_subscription
            counts[job.subscription_pk] -= 1
            if counts[job.subscription_pk] <= 0:
                del counts[job.subscription_pk]

    async def _flush(self) -> int:
        """Record the attempts that ended, in one transaction; how many."""
        results, self._results = self._results, []
        if not results:
            return 0
        try:
            await asyncio.to_thread(self._record_all, results)
        finally:
            # Recorded, or (the database failed) left pending and due: either way, free to go.
            self._recording.difference_update(job.delivery_pk for job, _ in results)
        return len(results)

    async def _attempt(self, job: _Job) -> Attempt:
        try:
            scheme, host, port = urls.check_url(job.url)
        except urls.UnsafeWebhookUrl as exc:
            return Attempt(None, f"refused: {exc.detail}")
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            return Attempt(None, f"cannot resolve {host}: {exc.strerror or exc}")
        if not self.policy.allow_private_urls:
            refused = urls.refusal(host, addresses)
            if refused is not None:
                return Attempt(None, f"refused: {refused}")
        if not addresses:
            return Attempt(None, f"{host} resolves to no address")
        target = _pinned(job.url, addresses[0])
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "host": _host_header(job.url),
            **sign_headers(
                message_id=job.message_id, payload=job.payload, secrets=job.secrets, at=utcnow()
            ),
        }
        try:
            async with (
                asyncio.timeout(self.policy.timeout_seconds),
                self._http().post(
                    target,
                    data=job.payload.encode(),
                    headers=headers,
                    allow_redirects=False,
                    # TLS checks the certificate against the name, not the pinned address.
                    server_hostname=host if scheme == "https" else None,
                ) as response,
            ):
                status = response.status
        except TimeoutError:
            return Attempt(None, f"no answer within {self.policy.timeout_seconds:g} s")
        except aiohttp.ClientError as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
        if 300 <= status < 400:
            return Attempt(status, "redirects are not followed")
        if not 200 <= status < 300:
            return Attempt(status, f"answered {status}")
        return Attempt(status, None)

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.policy.max_concurrency, use_dns_cache=False
                ),
                trust_env=False,
                auto_decompress=False,
            )
        return self._client

    def _record_all(self, results: Sequence[tuple[_Job, Attempt]]) -> None:
        now = utcnow()
        succeeded = [(job, attempt) for job, attempt in results if attempt.succeeded]
        with self.session_factory.begin() as session:
            if succeeded:
                # The common case in bulk: one executemany and one update per step.
                session.connection().execute(
                    _RECORD_SUCCESS,
                    [
                        {"b_pk": job.delivery_pk, "b_at": now, "b_code": attempt.response_code}
                        for job, attempt in succeeded
                    ],
                )
                session.execute(
                    update(WebhookSubscription)
                    .where(
                        WebhookSubscription.pk.in_({job.subscription_pk for job, _ in succeeded})
                    )
                    .values(consecutive_failures=0)
                )
            for job, attempt in results:
                if not attempt.succeeded:
                    self._record_failure(session, job, attempt)

    def _record_failure(self, session: Session, job: _Job, attempt: Attempt) -> None:
        now = utcnow()
        delivery = session.get(WebhookDelivery, job.delivery_pk, with_for_update=True)
        if delivery is None or delivery.status != DeliveryStatus.PENDING.value:
            return  # deleted with its subscription meanwhile
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.last_response_code = attempt.response_code
        delivery.last_error = attempt.error[:500] if attempt.error else None
        wait = retry_delay(self.policy.retry_schedule_seconds, delivery.attempts, self.rng)
        if wait is None:
            delivery.status = DeliveryStatus.FAILED.value
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = now + timedelta(seconds=wait)
        self._count_failure(session, job.subscription_pk, attempt)

    def _count_failure(self, session: Session, subscription_pk: int, attempt: Attempt) -> None:
        subscription = session.get(WebhookSubscription, subscription_pk, with_for_update=True)
        if subscription is None:
            return
        subscription.consecutive_failures += 1
        if (
            subscription.status != SubscriptionStatus.ACTIVE.value
            or subscription.consecutive_failures < self.policy.auto_pause_failures
        ):
            return
        reason = (
            f"paused after {subscription.consecutive_failures} failed attempts in a row "
            f"(last: {attempt.error})"
        )[:500]
        subscription.status = SubscriptionStatus.PAUSED.value
        subscription.paused_reason = reason
        subscription.updated_at = utcnow()
        feed.append(
            session,
            [
                NewFeedEvent(
                    type=EventType.SUBSCRIPTION_PAUSED,
                    payload={
                        "subscription_id": subscription.id,
                        "consecutive_failures": subscription.consecutive_failures,
                        "reason": reason,
                        "paused_at": format_timestamp(utcnow()),
                    },
                )
            ],
        )
        log.warning("webhook subscription %s %s", subscription.id, reason)


def _pinned(url: str, address: urls.IPAddress) -> str:
    """The URL with its host replaced by the checked address."""
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1]
