"""api_keys: an optional expiry (keys created with --expires-in, and old keys after a rotation)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 21:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both databases (SQLite has ADD/DROP COLUMN since 3.35): a batch
# table rebuild would drop `api_keys`, which other tables reference, with foreign keys on.
def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "expires_at")
