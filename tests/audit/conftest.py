"""Fixtures for the audit API tests: the service on the parametrised database, no background
tasks, its chain replaced by a fake one, a key per role, and a small anchored ledger."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.audit import get_chain_provider
from crm_ledger.app import create_app
from crm_ledger.config import Settings
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.verifier.chain import AuditChain
from tests.anchoring.fakes import FakeChain
from tests.audit.fakes import FakeAuditChain, anchor_all, record_deployment

with warnings.catch_warnings():
    # Starlette asks for the `httpx2` package, which is not installed; httpx works the same.
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient


@dataclass
class FakeChainProvider:
    """`ChainProvider` handing out views of one fake chain, whatever the address."""

    fake: FakeChain

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Callable[[str], AuditChain]]:
        yield lambda _address: FakeAuditChain(self.fake)


@pytest.fixture
def fake_chain() -> FakeChain:
    """The chain the service anchors to in these tests."""
    return FakeChain()


@pytest.fixture
def app(tmp_path: Path, database_url: str, fake_chain: FakeChain) -> Iterator[FastAPI]:
    """The service without background tasks, reading the fake chain."""
    app = create_app(
        Settings(data_dir=tmp_path, database_url=database_url, run_anchorer=False),
        background=False,
    )
    app.dependency_overrides[get_chain_provider] = lambda: FakeChainProvider(fake_chain)
    yield app
    # The lifespan disposed of it; this closes what a test read after it.
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
def as_role(app_sessions: sessionmaker[Session]) -> dict[Role, dict[str, str]]:
    """Authorization headers of one key per role."""
    with app_sessions.begin() as session:
        return {
            role: {"Authorization": f"Bearer {create_api_key(session, role=role)}"} for role in Role
        }


@dataclass
class Ledger:
    """What `ledger` built: customer ids (by name) and record ids (by customer name)."""

    customers: dict[str, str]
    records: dict[str, list[str]]


def interaction(customer_id: str, note: str) -> dict[str, Any]:
    """An interaction request."""
    return {
        "customer_id": customer_id,
        "type": "support_call",
        "channel": "phone",
        "occurred_at": "2026-11-25T10:00:00Z",
        "details": {"note": note},
    }


@pytest_asyncio.fixture
async def ledger(
    client: TestClient,
    app_sessions: sessionmaker[Session],
    as_role: dict[Role, dict[str, str]],
    fake_chain: FakeChain,
    tmp_path: Path,
) -> Ledger:
    """Ada, Brian and Chloe, 3 interactions each, written through the API and anchored."""
    recorder = as_role[Role.RECORDER]
    out = Ledger(customers={}, records={})
    for name in ("Ada", "Brian", "Chloe"):
        response = client.post(
            "/v1/customers",
            json={"name": f"{name} Example", "email": f"{name.lower()}@example.com"},
            headers=recorder,
        )
        assert response.status_code == 201, response.text
        out.customers[name] = response.json()["id"]
        out.records[name] = []
    for n in range(3):
        for name, customer_id in out.customers.items():
            response = client.post(
                "/v1/interactions", json=interaction(customer_id, f"{name} {n}"), headers=recorder
            )
            assert response.status_code == 201, response.text
            out.records[name].append(response.json()["id"])
    record_deployment(app_sessions, fake_chain)
    await anchor_all(app_sessions, fake_chain, tmp_path)
    return out
