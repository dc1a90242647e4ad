"""The service under test for every folder that drives its API (loaded by tests/conftest.py):
its settings, the app without background workers, a client, the app's sessions, a key per role
and its headers (`headers[Role.X]`, or `admin`, `recorder`, `auditor` for the usual three).

A folder changes what differs with two fixtures of its own instead of copying these:
`settings_overrides` (fields of `Settings`, e.g. tests/ingest's master key) and
`dependency_overrides` (FastAPI dependency -> replacement, e.g. tests/audit's fake chain).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

__all__ = ["TestClient", "api_settings"]


def api_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings of an app on `database_url` with no chain, ignoring any .env file."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "run_anchorer": False,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Fields of `settings` a folder sets differently (none here)."""
    return {}


@pytest.fixture
def dependency_overrides() -> dict[Callable[..., Any], Callable[..., Any]]:
    """FastAPI dependencies a folder replaces in `app` (none here)."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    """Settings for an app on the parametrised database, no chain."""
    return api_settings(tmp_path, database_url, **settings_overrides)


@pytest.fixture
def app(
    settings: Settings, dependency_overrides: dict[Callable[..., Any], Callable[..., Any]]
) -> Iterator[FastAPI]:
    """The service without its background workers (its engine disposed even without a
    client)."""
    app = create_app(settings, background=False)
    app.dependency_overrides.update(dependency_overrides)
    yield app
    app.state.runtime.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client that runs the app's lifespan."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def app_sessions(app: FastAPI) -> sessionmaker[Session]:
    """The app's own session factory (the database the API writes to)."""
    factory: sessionmaker[Session] = app.state.runtime.session_factory
    return factory


@pytest.fixture
def keys(app_sessions: sessionmaker[Session]) -> dict[Role, str]:
    """One API key per role."""
    with app_sessions.begin() as session:
        return {role: create_api_key(session, role=role, label=f"test {role}") for role in Role}


@pytest.fixture
def headers(keys: dict[Role, str]) -> dict[Role, dict[str, str]]:
    """Authorization headers of each role's key."""
    return {role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()}


@pytest.fixture
def admin(headers: dict[Role, dict[str, str]]) -> dict[str, str]:
    """Headers of an admin."""
    return headers[Role.ADMIN]


@pytest.fixture
def recorder(headers: dict[Role, dict[str, str]]) -> dict[str, str]:
    """Headers of a recorder."""
    return headers[Role.RECORDER]


@pytest.fixture
def auditor(headers: dict[Role, dict[str, str]]) -> dict[str, str]:
    """Headers of an auditor."""
    return headers[Role.AUDITOR]
