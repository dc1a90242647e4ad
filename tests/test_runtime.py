"""Where a process is put together (`runtime.Runtime`): every package that keeps a copy of
personal data has its eraser attached to the engine the app is built on, and an engine without
them refuses to erase rather than leave a copy behind."""

from __future__ import annotations

import gc
import importlib
import inspect
import weakref
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import crm_ledger
from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.db.models import Customer
from crm_ledger.db.session import make_engine, make_session_factory, upgrade_database
from crm_ledger.errors import ConfigError
from crm_ledger.journal.customers import create_customer
from crm_ledger.journal.erasure import copy_erasers_for_engine, erase_customer
from crm_ledger.journal.privacy import KeyRing, attach_keyring
from crm_ledger.journal.schemas import CustomerCreate
from crm_ledger.runtime import CHAIN_WORKERS, Runtime
from tests.apps import TestClient

PACKAGE = Path(crm_ledger.__file__).parent


def copy_holders() -> set[object]:
    """Every `erase_*` function of an `erasure` module outside the journal (which runs its own)."""
    erasers: set[object] = set()
    for path in sorted(PACKAGE.glob("*/erasure.py")):
        if path.parent.name == "journal":
            continue
        module = importlib.import_module(f"crm_ledger.{path.parent.name}.erasure")
        erasers.update(
            function
            for name, function in inspect.getmembers(module, inspect.isfunction)
            if name.startswith("erase_") and function.__module__ == module.__name__
        )
    return erasers


def test_copy_holders_are_found() -> None:
    # The discovery itself must see something, or the next test would pass on an empty set.
    assert {f.__module__ for f in copy_holders()} >= {"crm_ledger.ingest.erasure"}  # type: ignore[attr-defined]


def test_the_app_attaches_every_copy_holders_eraser(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, run_anchorer=False)  # type: ignore[call-arg]
    app = create_app(settings, background=False)
    try:
        attached = copy_erasers_for_engine(app.state.runtime.engine)
        assert attached is not None
        assert copy_holders() <= set(attached)
    finally:
        app.state.runtime.engine.dispose()


def test_an_engine_without_erasers_refuses_to_erase(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bare.sqlite'}")
    attach_keyring(engine, KeyRing.generate())
    upgrade_database(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            ada = create_customer(
                session=session, payload=CustomerCreate(name="Ada", email="a@example.org")
            )
        with pytest.raises(ConfigError, match="copy erasers"), sessions.begin() as session:
            erase_customer(session=session, customer_id=ada.id)
        with sessions() as session:
            erased_at = session.scalar(select(Customer.erased_at).where(Customer.id == ada.id))
        assert erased_at is None
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("setting", "worker"), [("run_anchorer", "anchorer"), ("run_indexer", "indexer")]
)
def test_a_role_switched_off_does_not_run_unless_run_alone(
    tmp_path: Path, setting: str, worker: str
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, **{setting: False})  # type: ignore[call-arg]
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        sessions: sessionmaker[Session] = make_session_factory(engine)
        everything = Runtime(settings=settings, engine=engine, session_factory=sessions)
        assert worker not in everything.supervisor.names
        assert "loyalty" in everything.supervisor.names
        alone = Runtime(settings=settings, engine=engine, session_factory=sessions, only=worker)
        assert alone.supervisor.names == [worker]
    finally:
        engine.dispose()


def test_an_app_no_longer_used_is_freed(tmp_path: Path) -> None:
    # FastAPI keeps every endpoint function in a module-level cache: an endpoint that closed
    # over its app kept each app made (routes, engine, runtime) for the life of the process,
    # 11 GiB over the test suite.
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    app = create_app(settings, background=False)
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 200
    app.state.runtime.engine.dispose()
    freed = weakref.ref(app)
    del app, client
    gc.collect()
    assert freed() is None


def test_the_chain_workers_together_run_as_their_settings_say(tmp_path: Path) -> None:
    """`crm-ledger worker chain` (serve's chain process): the anchorer, the indexer and
    loyalty, each as its `run_*` setting says, and none of the integrations' workers."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        sessions: sessionmaker[Session] = make_session_factory(engine)

        def names(**settings: bool) -> list[str]:
            runtime = Runtime(
                settings=Settings(_env_file=None, data_dir=tmp_path, **settings),  # type: ignore[call-arg]
                engine=engine,
                session_factory=sessions,
                only=CHAIN_WORKERS,
            )
            return runtime.supervisor.names

        assert names() == ["anchorer", "indexer", "loyalty"]
        assert names(run_indexer=False) == ["anchorer", "loyalty"]
        everything = Runtime(
            settings=Settings(_env_file=None, data_dir=tmp_path),  # type: ignore[call-arg]
            engine=engine,
            session_factory=sessions,
        )
        assert set(everything.supervisor.names) > {"anchorer", "indexer", "loyalty"}
    finally:
        engine.dispose()
