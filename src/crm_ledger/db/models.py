"""SQLAlchemy 2 models: the journal (customers, records, batches) and service bookkeeping.

Exports: `Base`, `Customer`, `Record`, `Batch`, `BatchStatus`, `Deployment`, `ApiKey`,
`IdempotencyEntry`, `AuditReport`.

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
    """A customer, their personal fields and the key their commitments are made with."""

    __tablename__ = "customers"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(40))
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
        Index("ix_records_customer_pk", "customer_pk", "pk"),
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


class IdempotencyEntry(Base):
    """The stored answer to a POST made with an `Idempotency-Key`, per API key."""

    __tablename__ = "idempotency"
    __table_args__ = (UniqueConstraint("api_key_pk", "key"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    api_key_pk: Mapped[int] = mapped_column(ForeignKey("api_keys.pk"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditReport(Base):
    """One run of the ledger audit (`crm-ledger audit`, `POST /v1/audit/ledger`) and its findings."""

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
