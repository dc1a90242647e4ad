"""Fixtures for API tests (the app, its client, a key per role and its headers come from
tests/apps.py): the app's sessions as `session_factory`, a customer."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.apps import TestClient


@pytest.fixture
def session_factory(app_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The app's own session factory (the same database the API writes to)."""
    return app_sessions


@pytest.fixture
def customer_id(client: TestClient, recorder: dict[str, str]) -> str:
    """A customer created through the API."""
    response = client.post(
        "/v1/customers", json={"name": "Ada Lovelace", "email": "ada@example.com"}, headers=recorder
    )
    assert response.status_code == 201, response.text
    customer_id: str = response.json()["id"]
    return customer_id
