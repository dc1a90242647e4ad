"""Fixtures for the audit API tests: the service of tests/apps.py with its chain replaced by a
fake one, and a small anchored ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.api.routes.audit import get_chain_provider
from crm_ledger.journal.keys import Role
from crm_ledger.verifier.chain import AuditChain
from tests.anchoring.fakes import FakeChain
from tests.apps import TestClient
from tests.audit.fakes import FakeAuditChain, anchor_all, record_deployment


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
def dependency_overrides(fake_chain: FakeChain) -> dict[Callable[..., Any], Callable[..., Any]]:
    """The app (tests/apps.py) reads the fake chain."""
    return {get_chain_provider: lambda: FakeChainProvider(fake_chain)}


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
    headers: dict[Role, dict[str, str]],
    fake_chain: FakeChain,
    tmp_path: Path,
) -> Ledger:
    """Ada, Brian and Chloe, 3 interactions each, written through the API and anchored."""
    recorder = headers[Role.RECORDER]
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
