"""The journal: customers, records, batches, the deployment, API keys, idempotent answers
and the customers they concern, stored audit reports.

Exports: `Customer`, `Record`, `BatchStatus`, `Batch`, `Deployment`, `ApiKey`,
`IdempotencyEntry`, `IdempotencySubject`, `AuditReport`.
"""

from __future__ import annotations

import enum
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
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm_ledger.db.models.base import PK, Base, UTCDateTime, new_id, utcnow


class Customer(Base):
    """A customer, their sealed personal fields and the key their commitments are made with.

    Name, email and phone are never stored in the clear (`crm_ledger.journal.privacy`): they are
    one AES-GCM ciphertext (`personal`) under the customer's data key, which is stored wrapped
    by the master key (`wrapped_data_key`); `email_index` is the email's blind index. All three
    are NULL once the customer's personal data is erased.
    """

    __tablename__ = "customers"
    __table_args__ = (
        # The CRM list's default order: a page reads its rows, not a sort of every customer.
        Index("ix_customers_created", "created_at", "pk"),
    )

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
    SENT = "sent"  # `db.outbox.SENT`
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


class IdempotencySubject(Base):
    """A customer a stored idempotent answer concerns: erasing them redacts the answer."""

    __tablename__ = "idempotency_subjects"

    idempotency_pk: Mapped[int] = mapped_column(
        ForeignKey("idempotency.pk", ondelete="CASCADE"), primary_key=True
    )
    customer_pk: Mapped[int] = mapped_column(
        ForeignKey("customers.pk"), primary_key=True, index=True
    )
