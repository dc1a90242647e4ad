"""loyalty: wallets, campaigns, award jobs, issuances (lots), redemptions, expirations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "loyalty_campaigns",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("onchain_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("per_customer_cap", sa.BigInteger(), nullable=True),
        sa.Column("expiry_seconds", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("planned_points", sa.BigInteger(), nullable=False),
        sa.Column("issued_points", sa.BigInteger(), nullable=False),
        sa.Column("chain_budget", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_campaigns")),
        sa.UniqueConstraint("id", name=op.f("uq_loyalty_campaigns_id")),
        sa.UniqueConstraint("onchain_id", name=op.f("uq_loyalty_campaigns_onchain_id")),
    )
    op.create_table(
        "loyalty_cursors",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_loyalty_cursors")),
    )
    op.create_table(
        "loyalty_award_jobs",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column(
            "campaign_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_pk"],
            ["loyalty_campaigns.pk"],
            name=op.f("fk_loyalty_award_jobs_campaign_pk_loyalty_campaigns"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_award_jobs")),
        sa.UniqueConstraint("id", name=op.f("uq_loyalty_award_jobs_id")),
    )
    with op.batch_alter_table("loyalty_award_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loyalty_award_jobs_campaign_pk"), ["campaign_pk"], unique=False
        )

    op.create_table(
        "loyalty_chain_ops",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "campaign_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_pk"],
            ["loyalty_campaigns.pk"],
            name=op.f("fk_loyalty_chain_ops_campaign_pk_loyalty_campaigns"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_chain_ops")),
    )
    with op.batch_alter_table("loyalty_chain_ops", schema=None) as batch_op:
        batch_op.create_index("ix_loyalty_chain_ops_status_pk", ["status", "pk"], unique=False)

    op.create_table(
        "loyalty_wallets",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("hd_index", sa.BigInteger(), nullable=True),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_pk"], ["customers.pk"], name=op.f("fk_loyalty_wallets_customer_pk_customers")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_wallets")),
        sa.UniqueConstraint("address", name=op.f("uq_loyalty_wallets_address")),
        sa.UniqueConstraint("customer_pk", name=op.f("uq_loyalty_wallets_customer_pk")),
        sa.UniqueConstraint("hd_index", name=op.f("uq_loyalty_wallets_hd_index")),
    )
    op.create_table(
        "loyalty_issuances",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("issuance_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column(
            "campaign_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("award_key", sa.String(length=300), nullable=False),
        sa.Column("record_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=True),
        sa.Column("op_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("earned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_pk"],
            ["loyalty_campaigns.pk"],
            name=op.f("fk_loyalty_issuances_campaign_pk_loyalty_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_loyalty_issuances_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["loyalty_award_jobs.pk"],
            name=op.f("fk_loyalty_issuances_job_pk_loyalty_award_jobs"),
        ),
        sa.ForeignKeyConstraint(
            ["op_pk"],
            ["loyalty_chain_ops.pk"],
            name=op.f("fk_loyalty_issuances_op_pk_loyalty_chain_ops"),
        ),
        sa.ForeignKeyConstraint(
            ["record_pk"], ["records.pk"], name=op.f("fk_loyalty_issuances_record_pk_records")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_issuances")),
        sa.UniqueConstraint(
            "campaign_pk", "award_key", name=op.f("uq_loyalty_issuances_campaign_pk")
        ),
        sa.UniqueConstraint("id", name=op.f("uq_loyalty_issuances_id")),
        sa.UniqueConstraint("issuance_id", name=op.f("uq_loyalty_issuances_issuance_id")),
    )
    with op.batch_alter_table("loyalty_issuances", schema=None) as batch_op:
        batch_op.create_index(
            "ix_loyalty_issuances_customer_pk", ["customer_pk", "pk"], unique=False
        )
        batch_op.create_index("ix_loyalty_issuances_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_loyalty_issuances_job_status", ["job_pk", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_loyalty_issuances_op_pk"), ["op_pk"], unique=False)
        batch_op.create_index(
            "ix_loyalty_issuances_status_campaign",
            ["status", "campaign_pk", "issuance_id"],
            unique=False,
        )

    op.create_table(
        "loyalty_redemptions",
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
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reward_ref", sa.String(length=200), nullable=False),
        sa.Column("burn_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("chain_ref", sa.LargeBinary(length=32), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("op_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_loyalty_redemptions_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["op_pk"],
            ["loyalty_chain_ops.pk"],
            name=op.f("fk_loyalty_redemptions_op_pk_loyalty_chain_ops"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_redemptions")),
        sa.UniqueConstraint("burn_id", name=op.f("uq_loyalty_redemptions_burn_id")),
        sa.UniqueConstraint("id", name=op.f("uq_loyalty_redemptions_id")),
    )
    with op.batch_alter_table("loyalty_redemptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_loyalty_redemptions_customer_pk", ["customer_pk", "pk"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_loyalty_redemptions_op_pk"), ["op_pk"], unique=False)

    op.create_table(
        "loyalty_expirations",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "issuance_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("burn_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("reason_code", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("op_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_loyalty_expirations_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["issuance_pk"],
            ["loyalty_issuances.pk"],
            name=op.f("fk_loyalty_expirations_issuance_pk_loyalty_issuances"),
        ),
        sa.ForeignKeyConstraint(
            ["op_pk"],
            ["loyalty_chain_ops.pk"],
            name=op.f("fk_loyalty_expirations_op_pk_loyalty_chain_ops"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_expirations")),
        sa.UniqueConstraint("burn_id", name=op.f("uq_loyalty_expirations_burn_id")),
        sa.UniqueConstraint("issuance_pk", name=op.f("uq_loyalty_expirations_issuance_pk")),
    )
    with op.batch_alter_table("loyalty_expirations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loyalty_expirations_customer_pk"), ["customer_pk"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_loyalty_expirations_op_pk"), ["op_pk"], unique=False)

    op.create_table(
        "loyalty_lot_uses",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "redemption_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "issuance_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issuance_pk"],
            ["loyalty_issuances.pk"],
            name=op.f("fk_loyalty_lot_uses_issuance_pk_loyalty_issuances"),
        ),
        sa.ForeignKeyConstraint(
            ["redemption_pk"],
            ["loyalty_redemptions.pk"],
            name=op.f("fk_loyalty_lot_uses_redemption_pk_loyalty_redemptions"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_loyalty_lot_uses")),
    )
    with op.batch_alter_table("loyalty_lot_uses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_loyalty_lot_uses_issuance_pk"), ["issuance_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_loyalty_lot_uses_redemption_pk"), ["redemption_pk"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("loyalty_lot_uses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loyalty_lot_uses_redemption_pk"))
        batch_op.drop_index(batch_op.f("ix_loyalty_lot_uses_issuance_pk"))

    op.drop_table("loyalty_lot_uses")
    with op.batch_alter_table("loyalty_expirations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loyalty_expirations_op_pk"))
        batch_op.drop_index(batch_op.f("ix_loyalty_expirations_customer_pk"))

    op.drop_table("loyalty_expirations")
    with op.batch_alter_table("loyalty_redemptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loyalty_redemptions_op_pk"))
        batch_op.drop_index("ix_loyalty_redemptions_customer_pk")

    op.drop_table("loyalty_redemptions")
    with op.batch_alter_table("loyalty_issuances", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_issuances_status_campaign")
        batch_op.drop_index(batch_op.f("ix_loyalty_issuances_op_pk"))
        batch_op.drop_index("ix_loyalty_issuances_job_status")
        batch_op.drop_index("ix_loyalty_issuances_expires_at")
        batch_op.drop_index("ix_loyalty_issuances_customer_pk")

    op.drop_table("loyalty_issuances")
    op.drop_table("loyalty_wallets")
    with op.batch_alter_table("loyalty_chain_ops", schema=None) as batch_op:
        batch_op.drop_index("ix_loyalty_chain_ops_status_pk")

    op.drop_table("loyalty_chain_ops")
    with op.batch_alter_table("loyalty_award_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_loyalty_award_jobs_campaign_pk"))

    op.drop_table("loyalty_award_jobs")
    op.drop_table("loyalty_cursors")
    op.drop_table("loyalty_campaigns")
