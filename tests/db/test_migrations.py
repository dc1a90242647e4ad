"""Migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from crm_ledger.db.models import Base
from crm_ledger.db.session import upgrade_database


def test_migrations_match_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade_database(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"customers", "records", "batches", "deployments", "api_keys", "idempotency"} <= tables
