"""Outbound: the Salesforce sync's state, relay cursors, webhook subscriptions and deliveries.

Exports: `SalesforceContact`, `SalesforceJob`, `SalesforceCursor`, `OutboundCursor`,
`WebhookSubscription`, `WebhookDelivery`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from crm_ledger.db.models.base import PK, Base, UTCDateTime, new_id, utcnow

# Salesforce sync (issue 12, part 3) ----------------------------------------------------------
# The sync's durable state: which customers must be sent, what was last sent for each (a hash of
# the values, never the values), the one Bulk API 2.0 job in flight, and its cursors.


class SalesforceContact(Base):
    """What the Salesforce sync knows of one customer's Contact."""

    __tablename__ = "salesforce_contacts"
    __table_args__ = (Index("ix_salesforce_contacts_dirty", "dirty", "customer_pk"),)

    customer_pk: Mapped[int] = mapped_column(
        ForeignKey("customers.pk"), primary_key=True, autoincrement=False
    )
    # Something about the customer may have changed: the next job compares and maybe sends.
    dirty: Mapped[bool] = mapped_column(Boolean, default=True)
    # SHA-256 of the field values Salesforce last accepted (NULL: never accepted).
    synced_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    salesforce_id: Mapped[str | None] = mapped_column(String(18))
    # The Contact does not exist yet: the next upsert also sets the required LastName.
    needs_create: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SalesforceJob(Base):
    """One Bulk API 2.0 ingest job: planned, open (created), uploaded, done or failed."""

    __tablename__ = "salesforce_jobs"
    __table_args__ = (Index("ix_salesforce_jobs_state", "state"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    # The job's id in Salesforce once created.
    job_id: Mapped[str | None] = mapped_column(String(18))
    object: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    # The CSV uploaded, kept so a job lost mid-upload is sent again byte for byte.
    payload: Mapped[str] = mapped_column(Text)
    # {customer id: hex SHA-256 of the values in this job}.
    rows: Mapped[dict[str, str]] = mapped_column(JSON)
    records: Mapped[int] = mapped_column(Integer)
    processed: Mapped[int | None] = mapped_column(Integer)
    failed: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SalesforceCursor(Base):
    """Where the sync stands: "feed" (change-feed position), "audit" (last audit report pk)."""

    __tablename__ = "salesforce_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# Outbound relays: NATS JetStream, signed webhooks (issue 12) ----------------------------------


class OutboundCursor(Base):
    """How far an outbound relay has carried the change feed: feed positions up to `position`
    were acknowledged by its destination ("nats": by JetStream)."""

    __tablename__ = "outbound_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookSubscription(Base):
    """A URL that receives change-feed events as Standard Webhooks; the signing secret is
    stored encrypted (`outbound.webhooks.secrets`). `position` is the feed position up to
    which events were turned into deliveries; it stands still while the subscription is
    paused, so a resumed subscription catches up."""

    __tablename__ = "webhook_subscriptions"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")
    paused_reason: Mapped[str | None] = mapped_column(String(500))
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    position: Mapped[int] = mapped_column(BigInteger)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event for one subscription: its body, how its attempts went, when it is tried next.

    `status`: pending (due at `next_attempt_at`), succeeded, failed (every attempt failed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_subscription", "subscription_pk", "pk"),
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    subscription_pk: Mapped[int] = mapped_column(
        ForeignKey("webhook_subscriptions.pk", ondelete="CASCADE")
    )
    # The `webhook-id` header: the feed event's id, so a receiver deduplicates on it.
    message_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(32))
    feed_position: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_response_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
