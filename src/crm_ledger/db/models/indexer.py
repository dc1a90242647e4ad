"""Chain-derived rows of the indexer and the CRM view, the change feed, reconciliation reports.

Exports: `IndexerStream`, `IndexedBlock`, `IndexedBatch`, `IndexedTokenEvent`,
`IndexedBalance`, `FeedEvent`, `FeedMark`, `ReconciliationReport`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from crm_ledger.db.models.base import PK, Base, UTCDateTime, new_id, utcnow

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
