"""Fixtures shared by every test folder: a migrated database on SQLite and on PostgreSQL; and,
from tests/apps.py, the service under test for the folders that drive its API."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.journal.erasure import attach_copy_erasers
from crm_ledger.journal.privacy import KeyRing, attach_keyring
from crm_ledger.runtime import PERSONAL_DATA_COPIES

pytest_plugins = ["tests.apps", "tests.committing"]

POSTGRES_URL = os.environ.get(
    "CRM_LEDGER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated engine on the parametrised database, with a master key of its own and the
    service's copy erasers (as `runtime.Runtime` attaches them)."""
    engine = make_engine(database_url)
    attach_keyring(engine, KeyRing.generate())
    attach_copy_erasers(engine, PERSONAL_DATA_COPIES)
    upgrade_database(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory bound to the migrated engine."""
    return make_session_factory(engine)
