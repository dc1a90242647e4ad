"""commerce ingest: sources, the webhook inbox, platform customer links, orders, clawbacks

Shop platforms (Shopify, WooCommerce, Magento) send webhooks to a source; each delivery is stored
in `ingest_deliveries` before the 200 (unique per source and delivery id) and mapped to records
afterwards. `ingest_orders` keeps each platform order's state; `ingest_clawbacks` the loyalty
points a refund or cancellation took back.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_sources",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("previous_secret_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ingest_sources")),
        sa.UniqueConstraint("id", name=op.f("uq_ingest_sources_id")),
    )
    op.create_table(
        "ingest_customer_links",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "source_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("external_id", sa.String(length=40), nullable=False),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_ingest_customer_links_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["source_pk"],
            ["ingest_sources.pk"],
            name=op.f("fk_ingest_customer_links_source_pk_ingest_sources"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ingest_customer_links")),
        sa.UniqueConstraint(
            "source_pk", "external_id", name=op.f("uq_ingest_customer_links_source_pk")
        ),
    )
    op.create_index(
        op.f("ix_ingest_customer_links_customer_pk"),
        "ingest_customer_links",
        ["customer_pk"],
        unique=False,
    )
    op.create_table(
        "ingest_deliveries",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column(
            "source_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("topic", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("body_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("record_ids", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_ingest_deliveries_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["source_pk"],
            ["ingest_sources.pk"],
            name=op.f("fk_ingest_deliveries_source_pk_ingest_sources"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ingest_deliveries")),
        sa.UniqueConstraint("id", name=op.f("uq_ingest_deliveries_id")),
        sa.UniqueConstraint(
            "source_pk", "delivery_id", name=op.f("uq_ingest_deliveries_source_pk")
        ),
    )
    op.create_index(
        op.f("ix_ingest_deliveries_customer_pk"), "ingest_deliveries", ["customer_pk"], unique=False
    )
    op.create_index(
        "ix_ingest_deliveries_source_status",
        "ingest_deliveries",
        ["source_pk", "status", "pk"],
        unique=False,
    )
    op.create_index(
        "ix_ingest_deliveries_status_pk", "ingest_deliveries", ["status", "pk"], unique=False
    )
    op.create_table(
        "ingest_orders",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "source_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("external_id", sa.String(length=40), nullable=False),
        sa.Column("order_number", sa.String(length=64), nullable=False),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "first_record_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "last_record_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.String(length=40), nullable=False),
        sa.Column("refunded", sa.String(length=40), nullable=False),
        sa.Column("refund_ids", sa.JSON(), nullable=False),
        sa.Column("platform_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("clawback_pending", sa.Boolean(), nullable=False),
        sa.Column("clawed_points", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_pk"], ["customers.pk"], name=op.f("fk_ingest_orders_customer_pk_customers")
        ),
        sa.ForeignKeyConstraint(
            ["first_record_pk"],
            ["records.pk"],
            name=op.f("fk_ingest_orders_first_record_pk_records"),
        ),
        sa.ForeignKeyConstraint(
            ["last_record_pk"], ["records.pk"], name=op.f("fk_ingest_orders_last_record_pk_records")
        ),
        sa.ForeignKeyConstraint(
            ["source_pk"],
            ["ingest_sources.pk"],
            name=op.f("fk_ingest_orders_source_pk_ingest_sources"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ingest_orders")),
        sa.UniqueConstraint("source_pk", "external_id", name=op.f("uq_ingest_orders_source_pk")),
    )
    op.create_index(
        "ix_ingest_orders_clawback_pending",
        "ingest_orders",
        ["clawback_pending", "pk"],
        unique=False,
    )
    op.create_index(
        op.f("ix_ingest_orders_customer_pk"), "ingest_orders", ["customer_pk"], unique=False
    )
    op.create_table(
        "ingest_clawbacks",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("order_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("requested_points", sa.BigInteger(), nullable=False),
        sa.Column("burned_points", sa.BigInteger(), nullable=False),
        sa.Column("shortfall_points", sa.BigInteger(), nullable=False),
        sa.Column(
            "redemption_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_ingest_clawbacks_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["order_pk"],
            ["ingest_orders.pk"],
            name=op.f("fk_ingest_clawbacks_order_pk_ingest_orders"),
        ),
        sa.ForeignKeyConstraint(
            ["redemption_pk"],
            ["loyalty_redemptions.pk"],
            name=op.f("fk_ingest_clawbacks_redemption_pk_loyalty_redemptions"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ingest_clawbacks")),
    )
    op.create_index(
        op.f("ix_ingest_clawbacks_customer_pk"), "ingest_clawbacks", ["customer_pk"], unique=False
    )
    op.create_index(
        op.f("ix_ingest_clawbacks_order_pk"), "ingest_clawbacks", ["order_pk"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ingest_clawbacks_order_pk"), table_name="ingest_clawbacks")
    op.drop_index(op.f("ix_ingest_clawbacks_customer_pk"), table_name="ingest_clawbacks")
    op.drop_table("ingest_clawbacks")
    op.drop_index(op.f("ix_ingest_orders_customer_pk"), table_name="ingest_orders")
    op.drop_index("ix_ingest_orders_clawback_pending", table_name="ingest_orders")
    op.drop_table("ingest_orders")
    op.drop_index("ix_ingest_deliveries_status_pk", table_name="ingest_deliveries")
    op.drop_index("ix_ingest_deliveries_source_status", table_name="ingest_deliveries")
    op.drop_index(op.f("ix_ingest_deliveries_customer_pk"), table_name="ingest_deliveries")
    op.drop_table("ingest_deliveries")
    op.drop_index(op.f("ix_ingest_customer_links_customer_pk"), table_name="ingest_customer_links")
    op.drop_table("ingest_customer_links")
    op.drop_table("ingest_sources")
