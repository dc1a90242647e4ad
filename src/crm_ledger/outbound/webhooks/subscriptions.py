"""The service behind `/v1/webhook-subscriptions`: subscriptions, their secrets and deliveries.

Exports: `SubscriptionStatus`, `DeliveryStatus`, `create_subscription`, `list_subscriptions`,
`get_subscription`, `update_subscription`, `set_status`, `delete_subscription`, `rotate_secret`,
`list_deliveries`, `redeliver`, `replay`, `subscription_public`, `delivery_public`,
`SECRET_OVERLAP`.

Every function works inside the caller's transaction. URLs are checked by the caller first
(`urls.check_public`: it resolves DNS, which has no place inside a transaction).
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from crm_ledger import feed
from crm_ledger.db.models import (
    FeedEvent,
    FeedMark,
    WebhookDelivery,
    WebhookSubscription,
    new_id,
    utcnow,
)
from crm_ledger.errors import NotFound, Unprocessable
from crm_ledger.journal.privacy import keyring_of
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.outbound.webhooks.schemas import (
    WebhookDeliveryPublic,
    WebhookSubscriptionCreate,
    WebhookSubscriptionPublic,
    WebhookSubscriptionUpdate,
)
from crm_ledger.outbound.webhooks.secrets import seal

__all__ = [
    "SECRET_OVERLAP",
    "DeliveryStatus",
    "SubscriptionStatus",
    "create_subscription",
    "delete_subscription",
    "delivery_public",
    "get_subscription",
    "list_deliveries",
    "list_subscriptions",
    "redeliver",
    "replay",
    "rotate_secret",
    "set_status",
    "subscription_public",
    "update_subscription",
]

#: After a rotation the previous secret keeps signing (a second signature) this long.
SECRET_OVERLAP = timedelta(hours=24)
_MAX_SUBSCRIPTIONS_LISTED = 1000


class SubscriptionStatus(enum.StrEnum):
    """Whether a subscription receives deliveries."""

    ACTIVE = "active"
    PAUSED = "paused"


class DeliveryStatus(enum.StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    #: Every attempt of the retry schedule failed; `redeliver` tries again.
    FAILED = "failed"


def create_subscription(
    *, session: Session, payload: WebhookSubscriptionCreate, secret: str
) -> WebhookSubscription:
    """A new active subscription that receives events appended from now on."""
    now = utcnow()
    subscription_id = new_id()
    head = session.scalar(select(func.max(FeedEvent.pk)))
    subscription = WebhookSubscription(
        id=subscription_id,
        url=payload.url,
        event_types=list(payload.event_types),
        description=payload.description,
        status=SubscriptionStatus.ACTIVE.value,
        secret=seal(secret, keyring=keyring_of(session), subscription_id=subscription_id),
        position=max(int(head or 0), _pruned_through(session)),
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(subscription)
    session.flush()
    return subscription


def list_subscriptions(*, session: Session) -> list[WebhookSubscription]:
    """Every subscription, oldest first."""
    query = select(WebhookSubscription).order_by(WebhookSubscription.pk)
    return list(session.scalars(query.limit(_MAX_SUBSCRIPTIONS_LISTED)))


def get_subscription(
    *, session: Session, subscription_id: str, for_update: bool = False
) -> WebhookSubscription:
    """One subscription; raises `NotFound`."""
    query = select(WebhookSubscription).where(WebhookSubscription.id == subscription_id)
    if for_update:
        query = query.with_for_update()
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"no webhook subscription with id {subscription_id!r}")
    return found


def update_subscription(
    *, session: Session, subscription_id: str, payload: WebhookSubscriptionUpdate
) -> WebhookSubscription:
    """Change url, event types or description."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    if payload.url is not None:
        subscription.url = payload.url
    if payload.event_types is not None:
        subscription.event_types = list(payload.event_types)
    if payload.description is not None:
        subscription.description = payload.description
    subscription.updated_at = utcnow()
    return subscription


def set_status(
    *, session: Session, subscription_id: str, status: SubscriptionStatus, reason: str | None
) -> WebhookSubscription:
    """Pause or resume; resuming clears the failure count and delivers what waited."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    subscription.status = status.value
    subscription.paused_reason = reason if status is SubscriptionStatus.PAUSED else None
    if status is SubscriptionStatus.ACTIVE:
        subscription.consecutive_failures = 0
    subscription.updated_at = utcnow()
    return subscription


def delete_subscription(*, session: Session, subscription_id: str) -> None:
    """Delete a subscription and its delivery log."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.subscription_pk == subscription.pk)
    )
    session.delete(subscription)


def rotate_secret(*, session: Session, subscription_id: str, secret: str) -> WebhookSubscription:
    """Replace the signing secret; the previous one also signs for `SECRET_OVERLAP`."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    now = utcnow()
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_expires_at = now + SECRET_OVERLAP
    subscription.secret = seal(secret, keyring=keyring_of(session), subscription_id=subscription.id)
    subscription.updated_at = now
    return subscription


def list_deliveries(
    *,
    session: Session,
    subscription_id: str,
    before: str | None,
    status: DeliveryStatus | None,
    limit: int,
) -> tuple[list[WebhookDelivery], str | None]:
    """A page of a subscription's deliveries, newest first, and the `before` of the next."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_pk == subscription.pk)
    if before is not None:
        anchor = session.scalar(
            select(WebhookDelivery.pk).where(
                WebhookDelivery.id == before, WebhookDelivery.subscription_pk == subscription.pk
            )
        )
        if anchor is None:
            raise Unprocessable(
                "`before` must be the id of one of this subscription's deliveries (the "
                "`next_before` of the previous page)",
                errors=[{"location": "query", "field": "before", "message": "unknown delivery"}],
            )
        query = query.where(WebhookDelivery.pk < anchor)
    if status is not None:
        query = query.where(WebhookDelivery.status == status.value)
    rows = list(session.scalars(query.order_by(WebhookDelivery.pk.desc()).limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def redeliver(*, session: Session, subscription_id: str, delivery_id: str) -> WebhookDelivery:
    """A new delivery of the same message (same `webhook-id`), due now."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    original = session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.subscription_pk == subscription.pk
        )
    )
    if original is None:
        raise NotFound(f"subscription {subscription_id!r} has no delivery {delivery_id!r}")
    now = utcnow()
    again = WebhookDelivery(
        id=new_id(),
        subscription_pk=subscription.pk,
        message_id=original.message_id,
        event_type=original.event_type,
        feed_position=original.feed_position,
        payload=original.payload,
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(again)
    session.flush()
    return again


def replay(*, session: Session, subscription_id: str, after: str | None) -> WebhookSubscription:
    """Move the subscription's feed cursor back to `after`: the events after it (of its
    types) become deliveries again. Raises `Unprocessable` for a cursor ahead of it."""
    subscription = get_subscription(session=session, subscription_id=subscription_id)
    pruned = _pruned_through(session)
    position = pruned if after is None else feed.decode_cursor(after)
    if position < pruned:
        raise feed.CursorExpired(
            "the events right after this cursor are older than the feed's retention and were "
            f"pruned; replay from {feed.encode_cursor(pruned)} or leave `after` out to replay "
            "from the oldest retained event",
            pruned_through=feed.encode_cursor(pruned),
        )
    if position > subscription.position:
        current = feed.encode_cursor(subscription.position)
        raise Unprocessable(
            "`after` is ahead of the events this subscription has been sent: replay goes "
            f"back in the feed (this subscription is at {current})",
            errors=[{"location": "body", "field": "after", "message": "ahead of the subscription"}],
        )
    subscription.position = position
    subscription.updated_at = utcnow()
    return subscription


def subscription_public(subscription: WebhookSubscription) -> WebhookSubscriptionPublic:
    """The public form of a subscription (never its secret)."""
    return WebhookSubscriptionPublic(
        id=subscription.id,
        url=subscription.url,
        event_types=list(subscription.event_types),
        description=subscription.description,
        status=SubscriptionStatus(subscription.status).value,
        paused_reason=subscription.paused_reason,
        consecutive_failures=subscription.consecutive_failures,
        cursor=feed.encode_cursor(subscription.position),
        created_at=format_timestamp(subscription.created_at),
        updated_at=format_timestamp(subscription.updated_at),
    )


def delivery_public(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
    """The public form of a delivery."""
    return WebhookDeliveryPublic(
        id=delivery.id,
        event_id=delivery.message_id,
        event_type=delivery.event_type,
        event_cursor=feed.encode_cursor(delivery.feed_position)
        if delivery.feed_position is not None
        else None,
        status=DeliveryStatus(delivery.status).value,
        attempts=delivery.attempts,
        last_response_code=delivery.last_response_code,
        last_error=delivery.last_error,
        last_attempt_at=_timestamp(delivery.last_attempt_at),
        next_attempt_at=_timestamp(delivery.next_attempt_at),
        created_at=format_timestamp(delivery.created_at),
    )


def _timestamp(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def _pruned_through(session: Session) -> int:
    position = session.scalar(select(FeedMark.position).where(FeedMark.name == feed.PRUNED_THROUGH))
    return int(position or 0)
