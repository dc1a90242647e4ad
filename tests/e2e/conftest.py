"""End-to-end fixtures: the whole service (API + anchorer) on a real node over JSON-RPC."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from crm_ledger.app import create_app
from crm_ledger.chain.node import LocalNode
from crm_ledger.config import Settings
from crm_ledger.journal.keys import Role, create_api_key
from tests.chain.conftest import anvil, free_port, hardhat  # noqa: F401  (session node fixtures)
from tests.waiting import wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

__all__ = ["free_port"]


@pytest.fixture(params=["anvil", "hardhat"])
def node(request: pytest.FixtureRequest) -> LocalNode:
    """A real EVM node: the session's Anvil, then the session's Hardhat node."""
    found: LocalNode = request.getfixturevalue(request.param)
    return found


def service_settings(tmp_path: Path, database_url: str, rpc_url: str, **extra: Any) -> Settings:
    """Settings for a service that cuts a batch as soon as a record waits 50 ms."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": database_url,
        "rpc_url": rpc_url,
        "batch_max_age_seconds": 0.05,
        "anchor_poll_seconds": 0.02,
        "anchor_retry_max_seconds": 0.5,
        "private_key": None,
        "keystore_path": None,
        "mnemonic": None,
    }
    values.update(extra)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def service(tmp_path: Path, database_url: str, node: LocalNode) -> Iterator[TestClient]:
    """The service with its anchorer running against `node`, on the parametrised database."""
    app: FastAPI = create_app(service_settings(tmp_path, database_url, node.rpc_url))
    with TestClient(app) as client:
        wait_for(lambda: client.get("/readyz").json()["chain"]["state"] == "running", 60)
        with app.state.runtime.session_factory.begin() as session:
            client.headers["Authorization"] = "Bearer " + create_api_key(
                session, role=Role.ADMIN, label="e2e"
            )
        yield client
