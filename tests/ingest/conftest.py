"""Fixtures for ingest tests: an app with no chain, an admin, sources of each platform."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.ingest.worker import IngestWorker
from crm_ledger.journal.keys import Role, create_api_key
from tests.ingest.shops import MAGENTO_SECRET, SHOPIFY_SECRET, WOO_SECRET, MagentoKeys

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

# base64 of 32 bytes: the master key (personal data, source secrets) of the ingest tests.
TEST_MASTER_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMi1ieXQ="


def ingest_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for an app on `database_url`, no chain."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "run_anchorer": False,
        "master_key": TEST_MASTER_KEY,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings of the app under test."""
    return ingest_settings(tmp_path, database_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    """The service without background tasks."""
    app = create_app(settings, background=False)
    yield app
    app.state.runtime.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client running the app's lifespan."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def session_factory(app: FastAPI) -> sessionmaker[Session]:
    """The app's session factory."""
    factory: sessionmaker[Session] = app.state.runtime.session_factory
    return factory


@pytest.fixture
def admin(session_factory: sessionmaker[Session]) -> dict[str, str]:
    """Headers of an admin."""
    with session_factory.begin() as session:
        key = create_api_key(session, role=Role.ADMIN, label="test admin")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def worker(settings: Settings, session_factory: sessionmaker[Session]) -> IngestWorker:
    """The ingest worker on the app's database (tests call `run_once`)."""
    return IngestWorker(settings=settings, session_factory=session_factory)


def make_source(client: TestClient, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    """Create a source through the API."""
    response = client.post("/v1/sources", json=body, headers=admin)
    assert response.status_code == 201, response.text
    source: dict[str, Any] = response.json()
    return source


@pytest.fixture
def shopify(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    """A Shopify source."""
    return make_source(
        client, admin, platform="shopify", name="Lovelace Prints", secret=SHOPIFY_SECRET
    )


@pytest.fixture
def woo(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    """A WooCommerce source."""
    return make_source(
        client, admin, platform="woocommerce", name="Hopper Books", secret=WOO_SECRET
    )


@pytest.fixture(scope="session")
def magento_keys() -> MagentoKeys:
    """Adobe Commerce's webhook key pair."""
    return MagentoKeys()


@pytest.fixture
def magento(client: TestClient, admin: dict[str, str], magento_keys: MagentoKeys) -> dict[str, Any]:
    """A Magento source with the public key and an HMAC secret."""
    return make_source(
        client,
        admin,
        platform="magento",
        name="Johnson Instruments",
        public_key=magento_keys.public_pem,
        secret=MAGENTO_SECRET,
    )


def webhook_path(source: dict[str, Any]) -> str:
    """The path part of a source's webhook URL."""
    url: str = source["webhook_url"]
    return url[url.index("/v1/webhooks/") :]
