"""indexer and CRM view: cursors, recent block hashes, indexed chain events, balances,
change feed, reconciliation reports

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_events",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("source_batch_pk", sa.BigInteger(), nullable=True),
        sa.Column("source_token_pk", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_feed_events")),
        sa.UniqueConstraint("id", name=op.f("uq_feed_events_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("feed_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feed_events_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_feed_events_source_batch_pk"), ["source_batch_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_feed_events_source_token_pk"), ["source_token_pk"], unique=False
        )

    op.create_table(
        "feed_marks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_feed_marks")),
    )
    op.create_table(
        "indexed_balances",
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("epoch", "address", name=op.f("pk_indexed_balances")),
    )
    op.create_table(
        "indexed_batches",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("head", sa.LargeBinary(length=32), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_indexed_batches")),
        sa.UniqueConstraint("block_hash", "log_index", name=op.f("uq_indexed_batches_block_hash")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("indexed_batches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_indexed_batches_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index("ix_indexed_batches_epoch_batch", ["epoch", "batch_id"], unique=False)

    op.create_table(
        "indexed_token_events",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("token_id", sa.LargeBinary(length=32), nullable=True),
        sa.Column("campaign", sa.LargeBinary(length=32), nullable=True),
        sa.Column("reference", sa.LargeBinary(length=32), nullable=True),
        sa.Column("from_address", sa.String(length=42), nullable=True),
        sa.Column("to_address", sa.String(length=42), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_indexed_token_events")),
        sa.UniqueConstraint(
            "block_hash", "log_index", name=op.f("uq_indexed_token_events_block_hash")
        ),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("indexed_token_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_indexed_token_events_block_number"), ["block_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_indexed_token_events_from_address"), ["from_address"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_indexed_token_events_to_address"), ["to_address"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_indexed_token_events_token_id"), ["token_id"], unique=False
        )

    op.create_table(
        "indexer_blocks",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_indexer_blocks")),
    )
    op.create_table(
        "indexer_streams",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("contract", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("from_block", sa.BigInteger(), nullable=False),
        sa.Column("next_block", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_indexer_streams")),
        sa.UniqueConstraint("contract", "epoch", name=op.f("uq_indexer_streams_contract")),
    )
    op.create_table(
        "reconciliation_reports",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("drift_count", sa.Integer(), nullable=False),
        sa.Column("repaired_count", sa.Integer(), nullable=False),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_reconciliation_reports")),
        sa.UniqueConstraint("id", name=op.f("uq_reconciliation_reports_id")),
    )


def downgrade() -> None:
    op.drop_table("reconciliation_reports")
    op.drop_table("indexer_streams")
    op.drop_table("indexer_blocks")
    with op.batch_alter_table("indexed_token_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_indexed_token_events_token_id"))
        batch_op.drop_index(batch_op.f("ix_indexed_token_events_to_address"))
        batch_op.drop_index(batch_op.f("ix_indexed_token_events_from_address"))
        batch_op.drop_index(batch_op.f("ix_indexed_token_events_block_number"))

    op.drop_table("indexed_token_events")
    with op.batch_alter_table("indexed_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_indexed_batches_epoch_batch")
        batch_op.drop_index(batch_op.f("ix_indexed_batches_block_number"))

    op.drop_table("indexed_batches")
    op.drop_table("indexed_balances")
    op.drop_table("feed_marks")
    with op.batch_alter_table("feed_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feed_events_source_token_pk"))
        batch_op.drop_index(batch_op.f("ix_feed_events_source_batch_pk"))
        batch_op.drop_index(batch_op.f("ix_feed_events_created_at"))

    op.drop_table("feed_events")
