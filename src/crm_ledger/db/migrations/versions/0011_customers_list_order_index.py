"""customers: an index in the CRM list's default order, so a list page reads only its rows

`GET /v1/crm/customers` pages newest first by (created_at, pk) with a keyset cursor; without an
index in that order every page sorted all customers (1 to 2 s at 100,000 on SQLite).

Revision ID: 0011_customers_list
Revises: 0010
Create Date: 2026-12-07 00:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011_customers_list"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_customers_created", "customers", ["created_at", "pk"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_customers_created", table_name="customers")
