"""Salesforce sync state (contacts, jobs, cursors) and the BI views bi_customers, bi_records,
bi_loyalty_ledger, bi_campaigns

The views are the stable, documented surface for BI tools (docs/bi.md): pseudonymous customer
ids, counts, amounts and ledger states, never a name, e-mail, phone or a record's free-form
details. They read the committed record documents (RFC 8785 JSON in `records.content`), so an
erased record's fields read as NULL there too. The SQL differs per dialect only in how JSON is
read, how a timestamp becomes a day and which numeric type amounts get.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("bi_customers", "bi_records", "bi_loyalty_ledger", "bi_campaigns")


def upgrade() -> None:
    op.create_table(
        "salesforce_contacts",
        sa.Column(
            "customer_pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("dirty", sa.Boolean(), nullable=False),
        sa.Column("synced_hash", sa.LargeBinary(length=32), nullable=True),
        sa.Column("salesforce_id", sa.String(length=18), nullable=True),
        sa.Column("needs_create", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_salesforce_contacts_customer_pk_customers"),
        ),
        sa.PrimaryKeyConstraint("customer_pk", name=op.f("pk_salesforce_contacts")),
    )
    with op.batch_alter_table("salesforce_contacts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_salesforce_contacts_dirty", ["dirty", "customer_pk"], unique=False
        )
    op.create_table(
        "salesforce_jobs",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=18), nullable=True),
        sa.Column("object", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_salesforce_jobs")),
    )
    with op.batch_alter_table("salesforce_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_salesforce_jobs_state", ["state"], unique=False)
    op.create_table(
        "salesforce_cursors",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_salesforce_cursors")),
    )
    for statement in _views(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("salesforce_cursors")
    with op.batch_alter_table("salesforce_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_salesforce_jobs_state")
    op.drop_table("salesforce_jobs")
    with op.batch_alter_table("salesforce_contacts", schema=None) as batch_op:
        batch_op.drop_index("ix_salesforce_contacts_dirty")
    op.drop_table("salesforce_contacts")


def _views(dialect: str) -> list[str]:
    if dialect == "postgresql":

        def field(name: str) -> str:
            return f"(convert_from(r.content, 'UTF8')::jsonb #>> '{{body,{name}}}')"

        def amount(expression: str) -> str:
            return f"CAST({expression} AS NUMERIC)"

        def day(column: str) -> str:
            return f"CAST(({column} AT TIME ZONE 'UTC') AS DATE)"

    else:

        def field(name: str) -> str:
            # CAST first: SQLite >= 3.45 would read a BLOB as its binary JSONB format.
            return f"json_extract(CAST(r.content AS TEXT), '$.body.{name}')"

        def amount(expression: str) -> str:
            return f"CAST({expression} AS REAL)"

        def day(column: str) -> str:
            return f"date({column})"

    return [
        """
        CREATE VIEW bi_customers AS
        SELECT
            c.id AS customer_id,
            c.tags AS tags,
            c.created_at AS created_at,
            c.erased_at IS NOT NULL AS erased,
            r.first_interaction_at AS first_interaction_at,
            r.last_interaction_at AS last_interaction_at,
            COALESCE(r.interaction_count, 0) AS interaction_count,
            COALESCE(r.order_count, 0) AS order_count,
            COALESCE(r.record_count, 0) AS record_count,
            COALESCE(l.issued_points, 0) AS loyalty_balance,
            COALESCE(l.planned_points, 0) AS loyalty_pending
        FROM customers c
        LEFT JOIN (
            SELECT
                customer_pk,
                MIN(CASE WHEN kind = 1 THEN created_at END) AS first_interaction_at,
                MAX(CASE WHEN kind = 1 THEN created_at END) AS last_interaction_at,
                SUM(CASE WHEN kind = 1 THEN 1 ELSE 0 END) AS interaction_count,
                SUM(CASE WHEN kind = 2 THEN 1 ELSE 0 END) AS order_count,
                COUNT(*) AS record_count
            FROM records
            GROUP BY customer_pk
        ) r ON r.customer_pk = c.pk
        LEFT JOIN (
            SELECT
                customer_pk,
                SUM(CASE WHEN status = 'issued' THEN remaining ELSE 0 END) AS issued_points,
                SUM(CASE WHEN status = 'planned' THEN remaining ELSE 0 END) AS planned_points
            FROM loyalty_issuances
            GROUP BY customer_pk
        ) l ON l.customer_pk = c.pk
        """,
        f"""
        CREATE VIEW bi_records AS
        SELECT
            r.id AS record_id,
            c.id AS customer_id,
            CASE r.kind WHEN 1 THEN 'interaction' WHEN 2 THEN 'order' WHEN 3 THEN 'erasure'
            END AS kind,
            {field("type")} AS interaction_type,
            {field("channel")} AS channel,
            {field("occurred_at")} AS occurred_at,
            {field("status")} AS order_status,
            {amount(field("total"))} AS order_total,
            {field("currency")} AS currency,
            r.created_at AS recorded_at,
            r.content IS NULL AS content_erased,
            r.seq AS seq,
            r.batch_id AS batch_id,
            COALESCE(b.status, 'pending') AS ledger_state,
            b.anchored_at AS anchored_at,
            b.block_number AS block_number
        FROM records r
        JOIN customers c ON c.pk = r.customer_pk
        LEFT JOIN batches b ON b.id = r.batch_id
        """,
        f"""
        CREATE VIEW bi_loyalty_ledger AS
        SELECT
            k.id AS campaign_id,
            k.name AS campaign_name,
            m.day AS day,
            SUM(m.earned) AS earned,
            SUM(m.redeemed) AS redeemed,
            SUM(m.expired) AS expired
        FROM (
            SELECT i.campaign_pk AS campaign_pk, {day("i.earned_at")} AS day,
                   i.points AS earned, 0 AS redeemed, 0 AS expired
            FROM loyalty_issuances i
            WHERE i.status = 'issued'
            UNION ALL
            SELECT i.campaign_pk, {day("d.redeemed_at")}, 0, u.points, 0
            FROM loyalty_lot_uses u
            JOIN loyalty_redemptions d ON d.pk = u.redemption_pk
            JOIN loyalty_issuances i ON i.pk = u.issuance_pk
            WHERE d.status = 'redeemed'
            UNION ALL
            SELECT i.campaign_pk, {day("e.expired_at")}, 0, 0, e.points
            FROM loyalty_expirations e
            JOIN loyalty_issuances i ON i.pk = e.issuance_pk
            WHERE e.status = 'expired'
        ) m
        JOIN loyalty_campaigns k ON k.pk = m.campaign_pk
        GROUP BY k.id, k.name, m.day
        """,
        """
        CREATE VIEW bi_campaigns AS
        SELECT
            k.id AS campaign_id,
            k.name AS campaign_name,
            k.status AS status,
            k.budget AS budget,
            k.issued_points AS spent,
            k.planned_points - k.issued_points AS committed,
            k.budget - k.planned_points AS remaining,
            k.starts_at AS starts_at,
            k.ends_at AS ends_at,
            k.created_at AS created_at,
            k.closed_at AS closed_at
        FROM loyalty_campaigns k
        """,
    ]
