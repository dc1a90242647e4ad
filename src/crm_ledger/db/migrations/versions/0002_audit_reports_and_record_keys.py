"""audit reports, and a record's own commitment key (erasure records)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_reports",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clean", sa.Boolean(), nullable=True),
        sa.Column("records_checked", sa.BigInteger(), nullable=False),
        sa.Column("discrepancy_count", sa.BigInteger(), nullable=False),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_audit_reports")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_reports_id")),
    )
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key", sa.LargeBinary(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_column("key")
    op.drop_table("audit_reports")
