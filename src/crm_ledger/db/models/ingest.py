"""Commerce ingest: webhook sources, the durable inbox, customer links, orders, clawbacks.

Exports: `IngestSource`, `IngestDelivery`, `IngestCustomerLink`, `IngestOrder`,
`IngestClawback`.
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
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from crm_ledger.db.models.base import PK, Base, UTCDateTime, new_id, utcnow

# Commerce ingest (issue 11) ------------------------------------------------------------------
# Shop platforms' webhooks: sources (where deliveries come from), the durable inbox they land
# in before the 200, and what the mapping worker derived: platform customer links, orders and
# loyalty clawbacks. See `crm_ledger.ingest`.


class IngestSource(Base):
    """A shop that sends webhooks; secrets are stored sealed (`journal.privacy.seal_secret`)."""

    __tablename__ = "ingest_sources"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    # shopify, woocommerce or magento.
    platform: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The secret before the last rotation, accepted until `previous_secret_expires_at`.
    previous_secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Magento / Adobe Commerce: the PEM public key its webhook signatures are checked with.
    public_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IngestDelivery(Base):
    """One webhook delivery: stored before the 200, mapped by the ingest worker afterwards."""

    __tablename__ = "ingest_deliveries"
    __table_args__ = (
        # Platforms retry and shops resend by hand: one delivery id is stored once.
        UniqueConstraint("source_pk", "delivery_id"),
        Index("ix_ingest_deliveries_status_pk", "status", "pk"),
        Index("ix_ingest_deliveries_source_status", "source_pk", "status", "pk"),
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    source_pk: Mapped[int] = mapped_column(ForeignKey("ingest_sources.pk"))
    delivery_id: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(String(100))
    # pending, mapped or failed.
    status: Mapped[str] = mapped_column(String(16))
    # The raw body (personal data): NULL once mapped, erased, or past retention.
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    body_size: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # The ledger customer it concerned, once known (erasure deletes the body through it).
    customer_pk: Mapped[int | None] = mapped_column(ForeignKey("customers.pk"), index=True)
    # Ids of the records the mapping wrote.
    record_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    mapped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IngestCustomerLink(Base):
    """A platform customer id of a source, and the ledger customer it is."""

    __tablename__ = "ingest_customer_links"
    __table_args__ = (UniqueConstraint("source_pk", "external_id"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    source_pk: Mapped[int] = mapped_column(ForeignKey("ingest_sources.pk"))
    external_id: Mapped[str] = mapped_column(String(40))
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IngestOrder(Base):
    """A platform order: its first record, its state as last applied, and refund bookkeeping."""

    __tablename__ = "ingest_orders"
    __table_args__ = (
        UniqueConstraint("source_pk", "external_id"),
        Index("ix_ingest_orders_clawback_pending", "clawback_pending", "pk"),
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    source_pk: Mapped[int] = mapped_column(ForeignKey("ingest_sources.pk"))
    external_id: Mapped[str] = mapped_column(String(40))
    order_number: Mapped[str] = mapped_column(String(64))
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"), index=True)
    first_record_pk: Mapped[int] = mapped_column(ForeignKey("records.pk"))
    last_record_pk: Mapped[int] = mapped_column(ForeignKey("records.pk"))
    status: Mapped[str] = mapped_column(String(24))
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[str] = mapped_column(String(40))
    # Cumulative refunded amount (decimal string) and the platform refund ids already counted.
    refunded: Mapped[str] = mapped_column(String(40), default="0")
    refund_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    platform_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # SHA-256 of the order's mapped state: the same state delivered again records nothing.
    state_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # Set when a refund or cancellation may take back points; cleared by the clawback pass.
    clawback_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    clawed_points: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IngestClawback(Base):
    """Points taken back for a refunded or cancelled order: burnt, and what could not be."""

    __tablename__ = "ingest_clawbacks"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    order_pk: Mapped[int] = mapped_column(ForeignKey("ingest_orders.pk"), index=True)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"), index=True)
    requested_points: Mapped[int] = mapped_column(BigInteger)
    burned_points: Mapped[int] = mapped_column(BigInteger)
    # Points the customer had already spent: not on chain any more, so not burnt.
    shortfall_points: Mapped[int] = mapped_column(BigInteger)
    redemption_pk: Mapped[int | None] = mapped_column(ForeignKey("loyalty_redemptions.pk"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
