"""Fixtures for ingest tests: the app of tests/apps.py with a master key, sources of each
platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.config import Settings
from crm_ledger.ingest.worker import IngestWorker
from tests.apps import TestClient, api_settings
from tests.ingest.shops import MAGENTO_SECRET, SHOPIFY_SECRET, WOO_SECRET, MagentoKeys

# base64 of 32 bytes: the master key (personal data, source secrets) of the ingest tests.
TEST_MASTER_KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMi1ieXQ="


def ingest_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for an app on `database_url`, no chain, the ingest tests' master key."""
    return api_settings(tmp_path, database_url, master_key=TEST_MASTER_KEY, **overrides)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The app's master key (tests/apps.py makes the app)."""
    return {"master_key": TEST_MASTER_KEY}


@pytest.fixture
def session_factory(app_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The app's session factory."""
    return app_sessions


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
