"""Loyalty: wallets, campaigns, the chain ops sent to LoyaltyToken and what they carry.

Exports: `LoyaltyWallet`, `LoyaltyCampaign`, `LoyaltyChainOp`, `LoyaltyAwardJob`,
`LoyaltyIssuance`, `LoyaltyRedemption`, `LoyaltyLotUse`, `LoyaltyExpiration`, `LoyaltyCursor`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
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

# Loyalty -------------------------------------------------------------------------------------
#
# Points are whole numbers held as BIGINT. Every transaction the service sends to LoyaltyToken is
# a `LoyaltyChainOp` (planned → sent → confirmed, or failed); the lots, redemptions and
# expirations it carries point at it. See `crm_ledger.loyalty`.


class LoyaltyWallet(Base):
    """A customer's loyalty address: custodial (HD index `hd_index`) or linked (their own)."""

    __tablename__ = "loyalty_wallets"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"), unique=True)
    address: Mapped[str] = mapped_column(String(42), unique=True)
    # BIP-44 m/44'/60'/0'/0/<hd_index> of the service's wallet seed; kept after linking.
    hd_index: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    linked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LoyaltyCampaign(Base):
    """A campaign: its rules and limits, and how much of its budget is planned and issued."""

    __tablename__ = "loyalty_campaigns"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    # The opaque bytes32 the chain knows the campaign by (random; never derived from the name).
    onchain_id: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    budget: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rules: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    per_customer_cap: Mapped[int | None] = mapped_column(BigInteger)
    expiry_seconds: Mapped[int | None] = mapped_column(BigInteger)
    # active, paused or closed.
    status: Mapped[str] = mapped_column(String(16))
    # Points of lots planned (not failed) and of lots confirmed on chain.
    planned_points: Mapped[int] = mapped_column(BigInteger, default=0)
    issued_points: Mapped[int] = mapped_column(BigInteger, default=0)
    # The budget last confirmed on chain (NULL until the worker has set it).
    chain_budget: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoyaltyChainOp(Base):
    """One LoyaltyToken transaction: an issueBatch, a redeem or an expireBatch."""

    __tablename__ = "loyalty_chain_ops"
    __table_args__ = (Index("ix_loyalty_chain_ops_status_pk", "status", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    # issue, redeem or expire.
    kind: Mapped[str] = mapped_column(String(16))
    campaign_pk: Mapped[int | None] = mapped_column(ForeignKey("loyalty_campaigns.pk"))
    # planned, sent, confirmed or failed.
    status: Mapped[str] = mapped_column(String(16))
    entries: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoyaltyAwardJob(Base):
    """A bulk award: the same points to many customers, issued in as few transactions as fit."""

    __tablename__ = "loyalty_award_jobs"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    campaign_pk: Mapped[int] = mapped_column(ForeignKey("loyalty_campaigns.pk"), index=True)
    points: Mapped[int] = mapped_column(BigInteger)
    recipients: Mapped[int] = mapped_column(Integer)
    # How the recipients were chosen: {"customer_ids": n} or the segment as requested.
    selection: Mapped[dict[str, object]] = mapped_column(JSON)
    # queued, done or failed.
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoyaltyIssuance(Base):
    """One issuance of points to one customer: a lot, which redemption and expiry draw from."""

    __tablename__ = "loyalty_issuances"
    __table_args__ = (
        UniqueConstraint("campaign_pk", "award_key"),
        Index("ix_loyalty_issuances_status_campaign", "status", "campaign_pk", "issuance_id"),
        Index("ix_loyalty_issuances_customer_pk", "customer_pk", "pk"),
        Index("ix_loyalty_issuances_job_status", "job_pk", "status"),
        Index("ix_loyalty_issuances_expires_at", "expires_at"),
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    # The issuance id on chain: 28-byte prefix ‖ uint32 index (see crm_ledger.loyalty.ids).
    issuance_id: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    campaign_pk: Mapped[int] = mapped_column(ForeignKey("loyalty_campaigns.pk"))
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"))
    # earning or award; award_key says of what ("record:<id>", "order:<customer>:<number>",
    # "job:<id>:<index>"), so the same reason never issues twice.
    source: Mapped[str] = mapped_column(String(16))
    award_key: Mapped[str] = mapped_column(String(300))
    record_pk: Mapped[int | None] = mapped_column(ForeignKey("records.pk"))
    job_pk: Mapped[int | None] = mapped_column(ForeignKey("loyalty_award_jobs.pk"))
    points: Mapped[int] = mapped_column(BigInteger)
    # Points of the lot neither redeemed nor expired.
    remaining: Mapped[int] = mapped_column(BigInteger)
    # planned (maybe in a transaction already), issued or failed.
    status: Mapped[str] = mapped_column(String(16))
    # Set when the lot is put into a transaction.
    address: Mapped[str | None] = mapped_column(String(42))
    op_pk: Mapped[int | None] = mapped_column(ForeignKey("loyalty_chain_ops.pk"), index=True)
    # The transaction that minted the lot (normally the op's; an earlier one after a crash).
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    earned_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoyaltyRedemption(Base):
    """Points a customer redeemed for a reward; burnt on chain under `burn_id`."""

    __tablename__ = "loyalty_redemptions"
    __table_args__ = (Index("ix_loyalty_redemptions_customer_pk", "customer_pk", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"))
    points: Mapped[int] = mapped_column(BigInteger)
    # The client's reference of the reward (free text); "" once the customer is erased.
    reward_ref: Mapped[str] = mapped_column(String(200))
    burn_id: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # The opaque `ref` the chain sees: never the reward_ref itself.
    chain_ref: Mapped[bytes] = mapped_column(LargeBinary(32))
    address: Mapped[str] = mapped_column(String(42))
    # pending, redeemed or failed.
    status: Mapped[str] = mapped_column(String(16))
    op_pk: Mapped[int | None] = mapped_column(ForeignKey("loyalty_chain_ops.pk"), index=True)
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoyaltyLotUse(Base):
    """Points a redemption took from one lot (oldest lots first)."""

    __tablename__ = "loyalty_lot_uses"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    redemption_pk: Mapped[int] = mapped_column(ForeignKey("loyalty_redemptions.pk"), index=True)
    issuance_pk: Mapped[int] = mapped_column(ForeignKey("loyalty_issuances.pk"), index=True)
    points: Mapped[int] = mapped_column(BigInteger)


class LoyaltyExpiration(Base):
    """The expired remainder of one lot, burnt on chain under the lot's own issuance id."""

    __tablename__ = "loyalty_expirations"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    issuance_pk: Mapped[int] = mapped_column(ForeignKey("loyalty_issuances.pk"), unique=True)
    burn_id: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"), index=True)
    address: Mapped[str] = mapped_column(String(42))
    points: Mapped[int] = mapped_column(BigInteger)
    # Why, for people; the chain gets `reason_code`, an opaque bytes32.
    reason: Mapped[str] = mapped_column(Text)
    reason_code: Mapped[bytes] = mapped_column(LargeBinary(32))
    # pending, expired or failed.
    status: Mapped[str] = mapped_column(String(16))
    op_pk: Mapped[int | None] = mapped_column(ForeignKey("loyalty_chain_ops.pk"), index=True)
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LoyaltyCursor(Base):
    """Where a loyalty poller stands; "earning" holds the next record seq to reward."""

    __tablename__ = "loyalty_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
