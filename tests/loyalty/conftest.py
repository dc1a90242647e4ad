"""Fixtures for loyalty tests: a fake token, the dev keyring, workers; the API tests' app
(tests/apps.py) reads the fake token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.loyalty import get_token_reader
from crm_ledger.config import DEV_MNEMONIC, Settings
from crm_ledger.loyalty.wallets import WalletKeyring
from crm_ledger.loyalty.worker import IssuanceWorker, TokenDeploymentRef
from tests.loyalty.fakes import ADDRESS, CODE_HASH, FakeToken


def loyalty_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for fast worker rounds, small batches."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "loyalty_batch_max_entries": 20,
        "loyalty_expire_batch_max_entries": 20,
        "loyalty_poll_seconds": 0.01,
        "anchor_retry_max_seconds": 0.05,
        # These tests step the worker by hand and expect each step to check the chain.
        "anchor_idle_check_seconds": 0,
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
def dependency_overrides(token: FakeToken) -> dict[Callable[..., Any], Callable[..., Any]]:
    """The app (tests/apps.py) reads the fake token."""
    return {get_token_reader: lambda: token}
