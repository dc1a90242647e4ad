"""Fixtures for loyalty tests: a fake token, the dev keyring, workers; an app for API tests."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.loyalty import get_token_reader
from crm_ledger.app import create_app
from crm_ledger.config import DEV_MNEMONIC, Settings
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.loyalty.wallets import WalletKeyring
from crm_ledger.loyalty.worker import IssuanceWorker, TokenDeploymentRef
from tests.loyalty.fakes import ADDRESS, CODE_HASH, FakeToken

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient


def loyalty_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for fast worker rounds, small batches."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "loyalty_batch_max_entries": 20,
        "loyalty_expire_batch_max_entries": 20,
        "loyalty_poll_seconds": 0.01,
        "anchor_retry_max_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def keyring() -> WalletKeyring:
    """Custodial addresses of the dev mnemonic."""
    found = WalletKeyring.from_secret(SecretStr(DEV_MNEMONIC))
    assert found is not None
    return found


@pytest.fixture
def token() -> FakeToken:
    """A fresh fake LoyaltyToken."""
    return FakeToken()


@pytest.fixture
def make_worker(
    session_factory: sessionmaker[Session],
    token: FakeToken,
    keyring: WalletKeyring,
    tmp_path: Path,
) -> Callable[..., IssuanceWorker]:
    """Workers on the fake token (a new one stands for a restarted process)."""

    def make(**overrides: Any) -> IssuanceWorker:
        values: dict[str, Any] = {
            "session_factory": session_factory,
            "token": token,
            "deployment": TokenDeploymentRef(address=ADDRESS, code_hash=CODE_HASH, block_number=0),
            "keyring": keyring,
            "settings": loyalty_settings(tmp_path),
            "receipt_timeout_seconds": 0.2,
        }
        values.update(overrides)
        return IssuanceWorker(**values)

    return make


# API ---------------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, database_url: str, token: FakeToken) -> Iterator[FastAPI]:
    """The service without background tasks; handlers read the fake token."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=database_url,
        run_anchorer=False,
    )
    app = create_app(settings, background=False)
    app.dependency_overrides[get_token_reader] = lambda: token
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
