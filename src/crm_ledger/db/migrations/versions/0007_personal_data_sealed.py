"""personal data sealed at rest; idempotent answers sealed, tied to their customers, erasable

- customers: name, email and phone become one AES-GCM ciphertext (`personal`) under a new
  per-customer data key, stored wrapped by the master key (`wrapped_data_key`), plus the email's
  blind index (`email_index`); the plaintext columns are dropped. Erased customers get nothing.
- idempotency: answers are sealed (`response_sealed`), tied to the customers they mention
  (`idempotency_subjects`: every "id" / "customer_id" in the answer that names a customer);
  answers concerning an already erased customer are dropped (`erased_at` set), so a replay
  answers 410; the plaintext `response_body` is dropped. `created_at` is indexed for pruning.
- loyalty_redemptions.reward_ref is emptied for customers already erased.

Columns are added and dropped with plain ALTER TABLE (SQLite 3.35+), never a batch rebuild.

Sealing needs the master key: the engine's key ring (`journal.privacy.attach_keyring`, done by
the service and the CLI before migrating). A database with rows to seal and no key ring is
refused with a message saying so. The downgrade opens everything again with the same key ring.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from crm_ledger.errors import ConfigError
from crm_ledger.journal.privacy import (
    KeyRing,
    PersonalFields,
    keyring_for_engine,
    new_data_key,
    open_personal,
    open_response,
    seal_personal,
    seal_response,
    unwrap_data_key,
    wrap_data_key,
)

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHUNK = 500


def _keyring(rows_waiting: int) -> KeyRing | None:
    keyring = keyring_for_engine(op.get_bind().engine)
    if keyring is None and rows_waiting:
        raise ConfigError(
            f"migration 0007 seals {rows_waiting} rows of personal data and needs the master "
            "key: run it through `crm-ledger` or the service, which load CRM_LEDGER_MASTER_KEY "
            "(or the key file) first"
        )
    return keyring


def _count(table: str) -> int:
    return int(op.get_bind().execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def _chunks(query: str) -> Iterator[Sequence[Any]]:
    """Rows of `query` (which must order by pk and take :after) a chunk at a time."""
    after = -1
    while True:
        rows = op.get_bind().execute(sa.text(query), {"after": after, "n": _CHUNK}).all()
        if not rows:
            return
        yield rows
        after = rows[-1].pk


def _ids_in(document: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(document, dict):
        for name, value in document.items():
            if name in ("id", "customer_id") and isinstance(value, str):
                found.add(value.lower())
            else:
                found |= _ids_in(value)
    elif isinstance(document, list):
        for value in document:
            found |= _ids_in(value)
    return found


def upgrade() -> None:
    import json

    bind = op.get_bind()
    keyring = _keyring(_count("customers") + _count("idempotency"))

    # Plain ALTER TABLE, never a batch rebuild: on SQLite a rebuild drops the old table, and
    # with foreign keys on that deletes (or is refused for) the rows that reference it.
    op.add_column("customers", sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=True))
    op.add_column("customers", sa.Column("personal", sa.LargeBinary(), nullable=True))
    op.add_column("customers", sa.Column("email_index", sa.LargeBinary(length=32), nullable=True))
    op.create_index(op.f("ix_customers_email_index"), "customers", ["email_index"])
    seal = sa.text(
        "UPDATE customers SET wrapped_data_key = :wrapped, personal = :personal, "
        "email_index = :email_index WHERE pk = :pk"
    )
    for rows in _chunks(
        "SELECT pk, id, name, email, phone FROM customers WHERE key IS NOT NULL AND pk > :after "
        "ORDER BY pk LIMIT :n"
    ):
        assert keyring is not None
        for row in rows:
            data_key = new_data_key()
            fields = PersonalFields(name=row.name, email=row.email, phone=row.phone)
            bind.execute(
                seal,
                {
                    "pk": row.pk,
                    "wrapped": wrap_data_key(keyring, customer_id=row.id, data_key=data_key),
                    "personal": seal_personal(data_key, customer_id=row.id, fields=fields),
                    "email_index": (
                        keyring.current.email_index(row.email) if row.email is not None else None
                    ),
                },
            )
    for column in ("name", "email", "phone"):
        op.drop_column("customers", column)

    op.create_table(
        "idempotency_subjects",
        sa.Column(
            "idempotency_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "customer_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["customer_pk"],
            ["customers.pk"],
            name=op.f("fk_idempotency_subjects_customer_pk_customers"),
        ),
        sa.ForeignKeyConstraint(
            ["idempotency_pk"],
            ["idempotency.pk"],
            name=op.f("fk_idempotency_subjects_idempotency_pk_idempotency"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "idempotency_pk", "customer_pk", name=op.f("pk_idempotency_subjects")
        ),
    )
    op.create_index(
        op.f("ix_idempotency_subjects_customer_pk"), "idempotency_subjects", ["customer_pk"]
    )
    op.add_column("idempotency", sa.Column("response_sealed", sa.LargeBinary(), nullable=True))
    op.add_column("idempotency", sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_idempotency_created_at"), "idempotency", ["created_at"])
    customers = {
        row.id: (row.pk, row.key is None)
        for row in bind.execute(sa.text("SELECT pk, id, key FROM customers"))
    }
    now = datetime.now(UTC)
    for rows in _chunks(
        "SELECT pk, api_key_pk, key, response_body FROM idempotency WHERE pk > :after "
        "ORDER BY pk LIMIT :n"
    ):
        assert keyring is not None
        for row in rows:
            try:
                mentioned = _ids_in(json.loads(row.response_body))
            except ValueError:
                mentioned = set()
            subjects = [customers[i] for i in sorted(mentioned) if i in customers]
            for customer_pk, _ in subjects:
                bind.execute(
                    sa.text(
                        "INSERT INTO idempotency_subjects (idempotency_pk, customer_pk) "
                        "VALUES (:entry, :customer)"
                    ),
                    {"entry": row.pk, "customer": customer_pk},
                )
            if any(erased for _, erased in subjects):
                values: dict[str, Any] = {"sealed": None, "erased_at": now}
            else:
                scope = f"{row.api_key_pk}|{row.key}"
                sealed = seal_response(keyring, scope=scope, body=row.response_body)
                values = {"sealed": sealed, "erased_at": None}
            bind.execute(
                sa.text(
                    "UPDATE idempotency SET response_sealed = :sealed, erased_at = :erased_at "
                    "WHERE pk = :pk"
                ).bindparams(sa.bindparam("erased_at", type_=sa.DateTime(timezone=True))),
                {**values, "pk": row.pk},
            )
    op.drop_column("idempotency", "response_body")

    bind.execute(
        sa.text(
            "UPDATE loyalty_redemptions SET reward_ref = '' WHERE customer_pk IN "
            "(SELECT pk FROM customers WHERE key IS NULL)"
        )
    )


def downgrade() -> None:
    bind = op.get_bind()
    keyring = _keyring(_count("customers") + _count("idempotency"))

    op.add_column("idempotency", sa.Column("response_body", sa.Text(), nullable=True))
    for rows in _chunks(
        "SELECT pk, api_key_pk, key, response_sealed FROM idempotency WHERE pk > :after "
        "ORDER BY pk LIMIT :n"
    ):
        assert keyring is not None
        for row in rows:
            if row.response_sealed is None:
                # An answer erased with its customer cannot come back: the entry goes.
                bind.execute(
                    sa.text("DELETE FROM idempotency_subjects WHERE idempotency_pk = :pk"),
                    {"pk": row.pk},
                )
                bind.execute(sa.text("DELETE FROM idempotency WHERE pk = :pk"), {"pk": row.pk})
                continue
            body = open_response(
                keyring, scope=f"{row.api_key_pk}|{row.key}", sealed=bytes(row.response_sealed)
            )
            bind.execute(
                sa.text("UPDATE idempotency SET response_body = :body WHERE pk = :pk"),
                {"body": body, "pk": row.pk},
            )
    op.drop_index(op.f("ix_idempotency_subjects_customer_pk"), table_name="idempotency_subjects")
    op.drop_table("idempotency_subjects")
    op.drop_index(op.f("ix_idempotency_created_at"), table_name="idempotency")
    op.drop_column("idempotency", "erased_at")
    op.drop_column("idempotency", "response_sealed")
    # response_body stays nullable after a downgrade: making it NOT NULL again would rebuild
    # the table on SQLite; every row has a body.

    op.add_column("customers", sa.Column("name", sa.String(length=200), nullable=True))
    op.add_column("customers", sa.Column("email", sa.String(length=320), nullable=True))
    op.add_column("customers", sa.Column("phone", sa.String(length=40), nullable=True))
    for rows in _chunks(
        "SELECT pk, id, wrapped_data_key, personal FROM customers "
        "WHERE wrapped_data_key IS NOT NULL AND pk > :after ORDER BY pk LIMIT :n"
    ):
        assert keyring is not None
        for row in rows:
            data_key = unwrap_data_key(
                keyring, customer_id=row.id, wrapped=bytes(row.wrapped_data_key)
            )
            fields = open_personal(data_key, customer_id=row.id, sealed=bytes(row.personal))
            bind.execute(
                sa.text(
                    "UPDATE customers SET name = :name, email = :email, phone = :phone "
                    "WHERE pk = :pk"
                ),
                {"name": fields.name, "email": fields.email, "phone": fields.phone, "pk": row.pk},
            )
    op.drop_index(op.f("ix_customers_email_index"), table_name="customers")
    for column in ("email_index", "personal", "wrapped_data_key"):
        op.drop_column("customers", column)
