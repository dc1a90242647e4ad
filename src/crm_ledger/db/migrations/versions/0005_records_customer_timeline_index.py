"""records: the customer index also orders by time, so a 360 timeline page reads only its rows

The customer 360 view pages a customer's records newest first (`created_at`, `pk`); with the
index on (customer_pk, pk) every page sorted the customer's whole history. The new index serves
every lookup the old one did (they all filter on customer_pk first).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_records_customer_created", ["customer_pk", "created_at", "pk"], unique=False
        )
        batch_op.drop_index("ix_records_customer_pk")


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index("ix_records_customer_pk", ["customer_pk", "pk"], unique=False)
        batch_op.drop_index("ix_records_customer_created")
