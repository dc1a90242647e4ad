"""Migration 0007 seals the personal data of an existing journal and drops what erasure missed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, select, text

from crm_ledger.db.models import Customer, IdempotencyEntry, IdempotencySubject
from crm_ledger.db.session import alembic_config, make_engine, make_session_factory
from crm_ledger.errors import ConfigError
from crm_ledger.journal.customers import find_customer_by_email, personal_fields
from crm_ledger.journal.privacy import KeyRing, PersonalFields, attach_keyring, open_response

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def migrate(engine: Engine, revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def old_journal(database_url: str) -> Engine:
    """A journal at revision 0005 with plaintext customers and stored answers."""
    engine = make_engine(database_url)
    migrate(engine, "0005")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, key_hash, role, created_at) "
                "VALUES ('k', :hash, 'recorder', :now)"
            ),
            {"hash": b"\x00" * 32, "now": NOW},
        )
        for pk, cid, name, email, key in (
            (1, "00000000-0000-4000-8000-000000000001", "Ada", "ada@example.com", b"\x01" * 32),
            (2, "00000000-0000-4000-8000-000000000002", None, None, None),
        ):
            conn.execute(
                text(
                    "INSERT INTO customers (pk, id, name, email, phone, tags, key, created_at, "
                    "erased_at) VALUES (:pk, :id, :name, :email, :phone, '[]', :key, :now, :erased)"
                ),
                {
                    "pk": pk,
                    "id": cid,
                    "name": name,
                    "email": email,
                    "phone": "+1 555 0100" if name else None,
                    "key": key,
                    "now": NOW,
                    "erased": None if key else NOW,
                },
            )
        # A record referencing the customer: the migration must not rebuild (drop) that table.
        conn.execute(
            text(
                "INSERT INTO records (id, customer_pk, kind, content, commitment, created_at) "
                "VALUES ('r', 1, 1, :content, :commitment, :now)"
            ),
            {"content": b"{}", "commitment": b"\x03" * 32, "now": NOW},
        )
        for key, customer in (("live", 1), ("erased", 2)):
            body = json.dumps({"id": f"00000000-0000-4000-8000-00000000000{customer}", "n": "x"})
            conn.execute(
                text(
                    "INSERT INTO idempotency (api_key_pk, key, request_hash, status_code, "
                    "response_body, created_at) VALUES (1, :key, :hash, 201, :body, :now)"
                ),
                {"key": key, "hash": b"\x02" * 32, "body": body, "now": NOW},
            )
    return engine


def test_0007_seals_existing_customers_and_answers(database_url: str) -> None:
    engine = old_journal(database_url)
    keyring = KeyRing.generate()
    attach_keyring(engine, keyring)
    try:
        migrate(engine, "0007")
        columns = {c["name"] for c in inspect(engine).get_columns("customers")}
        assert not {"name", "email", "phone"} & columns
        assert "response_body" not in {
            c["name"] for c in inspect(engine).get_columns("idempotency")
        }
        with make_session_factory(engine)() as session:
            ada, erased = session.scalars(select(Customer).order_by(Customer.pk)).all()
            assert personal_fields(session, ada) == PersonalFields(
                "Ada", "ada@example.com", "+1 555 0100"
            )
            assert erased.wrapped_data_key is None and erased.personal is None
            found = find_customer_by_email(session, "ADA@example.com")
            assert found is not None and found.pk == ada.pk
            entries = {e.key: e for e in session.scalars(select(IdempotencyEntry))}
            live = entries["live"].response_sealed
            assert live is not None and b"00000000-0000-4000-8000-000000000001" not in live
            assert json.loads(open_response(keyring, scope="1|live", sealed=live))["n"] == "x"
            # The answer about an already erased customer is gone: finding 4 on old journals.
            assert entries["erased"].response_sealed is None
            assert entries["erased"].erased_at is not None
            subjects = session.execute(select(IdempotencySubject.customer_pk)).scalars().all()
            assert sorted(subjects) == [1, 2]
    finally:
        engine.dispose()


def test_0007_refuses_to_run_without_the_master_key(database_url: str) -> None:
    engine = old_journal(database_url)
    try:
        with pytest.raises(ConfigError, match="needs the master key"):
            migrate(engine, "0007")
        # Nothing half-done: still at 0005, plaintext intact for a run with the key.
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM customers WHERE pk = 1")).scalar() == "Ada"
    finally:
        engine.dispose()


def test_0007_downgrades_back_to_plaintext(database_url: str) -> None:
    engine = old_journal(database_url)
    attach_keyring(engine, KeyRing.generate())
    try:
        migrate(engine, "0007")
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0005")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT name, email FROM customers WHERE pk = 1")).one()
            assert tuple(row) == ("Ada", "ada@example.com")
            keys = conn.execute(text("SELECT key FROM idempotency")).scalars().all()
            assert keys == ["live"]
    finally:
        engine.dispose()
