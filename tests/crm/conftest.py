"""Fixtures for the CRM tests: an app without background tasks on the parametrised database,
a client, and one key per role."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.journal.keys import Role, create_api_key

with warnings.catch_warnings():
    # Starlette asks for the `httpx2` package, which is not installed; httpx works the same.
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[FastAPI]:
    """The service without its chain, anchorer, loyalty worker or indexer."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=database_url,
        run_anchorer=False,
    )
    app = create_app(settings, background=False)
    yield app
    app.state.runtime.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client that runs the app's lifespan."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def app_sessions(app: FastAPI) -> sessionmaker[Session]:
    """The app's own session factory."""
    factory: sessionmaker[Session] = app.state.runtime.session_factory
    return factory


@pytest.fixture
def headers(app_sessions: sessionmaker[Session]) -> dict[Role, dict[str, str]]:
    """Authorization headers, one per role."""
    with app_sessions.begin() as session:
        return {
            role: {"Authorization": f"Bearer {create_api_key(session, role=role)}"} for role in Role
        }
