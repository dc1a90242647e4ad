"""SQLAlchemy 2 models: the journal (customers, records, batches) and service bookkeeping.

Exports: `Base`, `Customer`, `Record`, `Batch`, `BatchStatus`, `Deployment`, `ApiKey`,
`IdempotencyEntry`, `AuditReport`, and the loyalty tables `LoyaltyWallet`, `LoyaltyCampaign`,
`LoyaltyChainOp`, `LoyaltyAwardJob`, `LoyaltyIssuance`, `LoyaltyRedemption`, `LoyaltyLotUse`,
`LoyaltyExpiration`, `LoyaltyCursor`; and the indexer's and CRM view's `IndexerStream`,
`IndexedBlock`, `IndexedBatch`, `IndexedTokenEvent`, `IndexedBalance`, `FeedEvent`, `FeedMark`,
`ReconciliationReport`; `IdempotencySubject` (issue 10); commerce ingest's `IngestSource`,
`IngestDelivery`, `IngestCustomerLink`, `IngestOrder`, `IngestClawback`; the Salesforce sync's
`SalesforceContact`, `SalesforceJob`, `SalesforceCursor`.

Public ids are UUID strings; an integer `pk` gives a stable insertion order for cursors and for
the anchorer, which cuts pending records (seq IS NULL) in `pk` order.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for long journals.
PK = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Timezone-aware now, UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """Fresh public id."""
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base with naming conventions Alembic can rely on."""


Base.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Customer(Base):
    """A customer, their sealed personal fields and the key their commitments are made with.

    Name, email and phone are never stored in the clear (`crm_ledger.journal.privacy`): they are
    one AES-GCM ciphertext (`personal`) under the customer's data key, which is stored wrapped
    by the master key (`wrapped_data_key`); `email_index` is the email's blind index. All three
    are NULL once the customer's personal data is erased.
    """

    __tablename__ = "customers"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    wrapped_data_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    personal: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    external_ref: Mapped[str | None] = mapped_column(String(200), unique=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # 32 random bytes; NULL once the customer's personal data is erased.
    key: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # Leaf hash of the customer's latest sequenced record: the tip of their hash chain.
    last_leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Record(Base):
    """One journal record (interaction, order, erasure); immutable once written."""

    __tablename__ = "records"
    __table_args__ = (
        # The anchorer's hot query: pending records in insertion order.
        Index(
            "ix_records_pending",
            "pk",
            sqlite_where=text("seq IS NULL"),
            postgresql_where=text("seq IS NULL"),
        ),
        # A customer's records newest first: the 360 timeline reads one page, not a sort.
        Index("ix_records_customer_created", "customer_pk", "created_at", "pk"),
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    customer_pk: Mapped[int] = mapped_column(ForeignKey("customers.pk"))
    kind: Mapped[int] = mapped_column(Integer)
    # RFC 8785 bytes of the committed document; NULL once erased.
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    commitment: Mapped[bytes] = mapped_column(LargeBinary(32))
    # The record's own commitment key, for records not committed with their customer's key
    # (erasure records: a fresh random key, so the commitment cannot be tied to the customer).
    key: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set by the anchorer when it cuts a batch.
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    previous_leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), index=True)

    customer: Mapped[Customer] = relationship(lazy="joined")


class BatchStatus(enum.StrEnum):
    """Where a batch stands: cut in the journal, sent to the chain, or mined."""

    CUT = "cut"
    SENT = "sent"
    ANCHORED = "anchored"


class Batch(Base):
    """One anchored (or about to be) batch; `id` equals the batch id on chain."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    count: Mapped[int] = mapped_column(Integer)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    previous_head: Mapped[bytes] = mapped_column(LargeBinary(32))
    head: Mapped[bytes] = mapped_column(LargeBinary(32))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.CUT.value)
    epoch: Mapped[int | None] = mapped_column(Integer)
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    anchored_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Deployment(Base):
    """Where a contract was deployed, and what the chain looked like then (for reset checks)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("contract", "epoch"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    contract: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    genesis_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    address: Mapped[str] = mapped_column(String(42))
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    block_number: Mapped[int] = mapped_column(BigInteger)
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Hardening (issue 10): keys created with an expiry, and old keys after a rotation.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyEntry(Base):
    """The stored answer to a POST made with an `Idempotency-Key`, per API key."""

    __tablename__ = "idempotency"
    __table_args__ = (UniqueConstraint("api_key_pk", "key"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    api_key_pk: Mapped[int] = mapped_column(ForeignKey("api_keys.pk"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    status_code: Mapped[int] = mapped_column(Integer)
    # The answer, sealed (`journal.privacy.seal_response`); NULL once a customer it concerned
    # was erased (a replay then answers 410).
    response_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditReport(Base):
    """One run of the ledger audit (`crm-ledger audit`, `POST /v1/audit/ledger`), with findings."""

    __tablename__ = "audit_reports"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    # running, done (report holds the findings) or failed (error says why).
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    clean: Mapped[bool | None] = mapped_column(Boolean)
    records_checked: Mapped[int] = mapped_column(BigInteger, default=0)
    discrepancy_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # The full report as JSON (`crm_ledger.audit.report.LedgerReport.to_json`).
    report: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


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


# Indexer and CRM view (issue 5) ---------------------------------------------------------------
# Chain-derived rows. The indexer writes them; a reorg deletes the rows of orphaned blocks.
# `sqlite_autoincrement` keeps SQLite from reusing the pk of a deleted last row: feed positions
# and the indexed rows feed events point at must never come back with other meanings.


class IndexerStream(Base):
    """The indexer's cursor over one deployed contract: blocks below `next_block` are indexed."""

    __tablename__ = "indexer_streams"
    __table_args__ = (UniqueConstraint("contract", "epoch"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    contract: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(42))
    # The deployment block: where indexing starts, and where a full rollback returns to.
    from_block: Mapped[int] = mapped_column(BigInteger)
    next_block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IndexedBlock(Base):
    """Hash of a recently indexed block, to notice when the chain no longer has it (a reorg)."""

    __tablename__ = "indexer_blocks"

    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class IndexedBatch(Base):
    """A `BatchAnchored` event of the AuditLedger, as the indexer read it from the chain."""

    __tablename__ = "indexed_batches"
    __table_args__ = (
        UniqueConstraint("block_hash", "log_index"),
        Index("ix_indexed_batches_epoch_batch", "epoch", "batch_id"),
        {"sqlite_autoincrement": True},
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    epoch: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    head: Mapped[bytes] = mapped_column(LargeBinary(32))
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    log_index: Mapped[int] = mapped_column(Integer)
    indexed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IndexedTokenEvent(Base):
    """A LoyaltyToken event (`Issued`, `Redeemed`, `Expired`, ERC-20 `Transfer`) read from chain.

    `token_id` is the issuance or burn id; `reference` the redemption ref or expiry reason.
    `from_address` / `to_address` are the holder (the zero address for mints and burns is stored
    as NULL); amounts above 2**63 - 1 points are refused by the indexer.
    """

    __tablename__ = "indexed_token_events"
    __table_args__ = (
        UniqueConstraint("block_hash", "log_index"),
        {"sqlite_autoincrement": True},
    )

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    epoch: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(16))
    token_id: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    campaign: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    reference: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    from_address: Mapped[str | None] = mapped_column(String(42), index=True)
    to_address: Mapped[str | None] = mapped_column(String(42), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    log_index: Mapped[int] = mapped_column(Integer)
    indexed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IndexedBalance(Base):
    """A holder's LoyaltyToken balance as the indexed `Transfer` events add up to."""

    __tablename__ = "indexed_balances"

    epoch: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)


class FeedEvent(Base):
    """One change-feed event; `pk` is its position, `id` what consumers deduplicate on."""

    __tablename__ = "feed_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    customer_id: Mapped[str | None] = mapped_column(String(36))
    # The event's JSON body (without the envelope: id, type, created_at, cursor).
    payload: Mapped[str] = mapped_column(Text)
    # The indexed row the event was derived from, so a reorg retracts exactly its events.
    source_batch_pk: Mapped[int | None] = mapped_column(BigInteger, index=True)
    source_token_pk: Mapped[int | None] = mapped_column(BigInteger, index=True)


class FeedMark(Base):
    """A named position in the change feed (`pruned_through`: older events were deleted)."""

    __tablename__ = "feed_marks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReconciliationReport(Base):
    """One reconciliation run: journal and loyalty tables against the chain, and its findings."""

    __tablename__ = "reconciliation_reports"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    # requested (waiting for the indexer's process), running, done or failed.
    status: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    drift_count: Mapped[int] = mapped_column(Integer, default=0)
    repaired_count: Mapped[int] = mapped_column(Integer, default=0)
    # The findings as JSON (`crm_ledger.indexer.reconcile.ReconciliationResult.to_json`).
    report: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


# Commerce ingest (issue 11) ------------------------------------------------------------------
# Shop platforms' webhooks: sources (where deliveries come from), the durable inbox they land
# in before the 200, and what the mapping worker derived: platform customer links, orders and
# loyalty clawbacks. See `crm_ledger.ingest`.


class IngestSource(Base):
    """A shop that sends webhooks; secrets are stored encrypted (`crm_ledger.ingest.secrets`)."""

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


# Personal data (issue 10) ---------------------------------------------------------------------


class IdempotencySubject(Base):
    """A customer a stored idempotent answer concerns: erasing them redacts the answer."""

    __tablename__ = "idempotency_subjects"

    idempotency_pk: Mapped[int] = mapped_column(
        ForeignKey("idempotency.pk", ondelete="CASCADE"), primary_key=True
    )
    customer_pk: Mapped[int] = mapped_column(
        ForeignKey("customers.pk"), primary_key=True, index=True
    )
