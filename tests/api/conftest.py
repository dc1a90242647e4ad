"""Fixtures for API tests: an app on the parametrised database, a client, one key per role."""

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
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for an app on the parametrised database, no chain."""
    return Settings(data_dir=tmp_path, database_url=database_url, run_anchorer=False)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    """The service without its background tasks (its engine disposed even without a client)."""
    app = create_app(settings, background=False)
    yield app
    app.state.runtime.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client that runs the app's lifespan."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def session_factory(app: FastAPI) -> sessionmaker[Session]:
    """The app's own session factory (the same database the API writes to)."""
    factory: sessionmaker[Session] = app.state.runtime.session_factory
    return factory


@pytest.fixture
def keys(session_factory: sessionmaker[Session]) -> dict[Role, str]:
    """One API key per role."""
    with session_factory.begin() as session:
        return {role: create_api_key(session, role=role, label=f"test {role}") for role in Role}


@pytest.fixture
def recorder(keys: dict[Role, str]) -> dict[str, str]:
    """Headers of a recorder."""
    return {"Authorization": f"Bearer {keys[Role.RECORDER]}"}


@pytest.fixture
def auditor(keys: dict[Role, str]) -> dict[str, str]:
    """Headers of an auditor."""
    return {"Authorization": f"Bearer {keys[Role.AUDITOR]}"}


@pytest.fixture
def customer_id(client: TestClient, recorder: dict[str, str]) -> str:
    """A customer created through the API."""
    response = client.post(
        "/v1/customers", json={"name": "Ada Lovelace", "email": "ada@example.com"}, headers=recorder
    )
    assert response.status_code == 201, response.text
    customer_id: str = response.json()["id"]
    return customer_id
