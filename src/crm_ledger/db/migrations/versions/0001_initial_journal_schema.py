"""initial journal schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 15:19:49.111650
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "api_keys",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("id", name=op.f("uq_api_keys_id")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("previous_head", sa.LargeBinary(length=32), nullable=False),
        sa.Column("head", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("anchored_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("first_seq", name=op.f("uq_batches_first_seq")),
    )
    op.create_table(
        "customers",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=40), nullable=True),
        sa.Column("external_ref", sa.String(length=200), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("key", sa.LargeBinary(length=32), nullable=True),
        sa.Column("last_leaf_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_customers")),
        sa.UniqueConstraint("external_ref", name=op.f("uq_customers_external_ref")),
        sa.UniqueConstraint("id", name=op.f("uq_customers_id")),
    )
    op.create_table(
        "deployments",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("contract", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("genesis_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_deployments")),
        sa.UniqueConstraint("contract", "epoch", name=op.f("uq_deployments_contract")),
    )
    op.create_table(
        "idempotency",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "api_key_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_pk"], ["api_keys.pk"], name=op.f("fk_idempotency_api_key_pk_api_keys")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_idempotency")),
        sa.UniqueConstraint("api_key_pk", "key", name=op.f("uq_idempotency_api_key_pk")),
    )
    op.create_table(
        "records",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("commitment", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("previous_leaf_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_records_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["customer_pk"], ["customers.pk"], name=op.f("fk_records_customer_pk_customers")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_records")),
        sa.UniqueConstraint("id", name=op.f("uq_records_id")),
        sa.UniqueConstraint("seq", name=op.f("uq_records_seq")),
    )
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_records_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index("ix_records_customer_pk", ["customer_pk", "pk"], unique=False)
        batch_op.create_index(
            "ix_records_pending",
            ["pk"],
            unique=False,
            sqlite_where=sa.text("seq IS NULL"),
            postgresql_where=sa.text("seq IS NULL"),
        )


def downgrade() -> None:

    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_records_pending",
            sqlite_where=sa.text("seq IS NULL"),
            postgresql_where=sa.text("seq IS NULL"),
        )
        batch_op.drop_index("ix_records_customer_pk")
        batch_op.drop_index(batch_op.f("ix_records_batch_id"))

    op.drop_table("records")
    op.drop_table("idempotency")
    op.drop_table("deployments")
    op.drop_table("customers")
    op.drop_table("batches")
    op.drop_table("api_keys")
