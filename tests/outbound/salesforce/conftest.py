"""The Salesforce stand-in served on 127.0.0.1 by uvicorn, an RSA key pair, and data factories."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import Customer, LoyaltyIssuance, Record, new_id
from crm_ledger.ledger.leaf import RecordKind
from crm_ledger.outbound.salesforce.client import BulkClient, JwtBearerAuth
from crm_ledger.outbound.salesforce.standin import SalesforceStandIn
from crm_ledger.outbound.salesforce.sync import SalesforceSync
from tests.loyalty.fakes import make_campaign
from tests.waiting import wait_for

CLIENT_ID = "3MVG9-test-consumer-key"
USERNAME = "integration@crm-ledger.example"


@dataclass(frozen=True)
class KeyPair:
    """A connected app's certificate key (public) and the service's signing key (private)."""

    private_pem: bytes
    public_pem: bytes


@pytest.fixture(scope="session")
def key_pair() -> KeyPair:
    """A 2048-bit RSA key pair for the JWT bearer flow."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def standin(key_pair: KeyPair) -> Iterator[SalesforceStandIn]:
    """The stand-in, served by uvicorn on 127.0.0.1 in a thread of its own."""
    port = free_port()
    stand_in = SalesforceStandIn(
        base_url=f"http://127.0.0.1:{port}",
        client_id=CLIENT_ID,
        username=USERNAME,
        public_key_pem=key_pair.public_pem,
    )
    server = uvicorn.Server(
        uvicorn.Config(stand_in.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, what="the stand-in to start")
    try:
        yield stand_in
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the sync."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def bulk_client(
    http: httpx.AsyncClient, key_pair: KeyPair, login_url: str, **overrides: Any
) -> BulkClient:
    """A Bulk API client logging in to `login_url` with the test key."""
    auth = JwtBearerAuth(
        http=http,
        login_url=login_url,
        client_id=overrides.pop("client_id", CLIENT_ID),
        username=overrides.pop("username", USERNAME),
        private_key_pem=overrides.pop("private_key_pem", key_pair.private_pem),
    )
    return BulkClient(http=http, auth=auth, api_version="v62.0")


def make_sync(
    session_factory: sessionmaker[Session],
    http: httpx.AsyncClient,
    key_pair: KeyPair,
    standin: SalesforceStandIn,
    **overrides: Any,
) -> SalesforceSync:
    """A sync against the stand-in that polls fast."""
    login_url = overrides.pop("login_url", standin.base_url)
    auth = {k: overrides.pop(k) for k in ("private_key_pem",) if k in overrides}
    values: dict[str, Any] = {"poll_seconds": 0.01, "max_wait_seconds": 5.0}
    values.update(overrides)
    return SalesforceSync(
        session_factory=session_factory,
        client=bulk_client(http, key_pair, login_url, **auth),
        **values,
    )


def add_customers(session_factory: sessionmaker[Session], count: int) -> list[str]:
    """`count` customers with personal fields (which must never reach Salesforce); ids."""
    ids = [new_id() for _ in range(count)]
    now = datetime.now(UTC)
    with session_factory.begin() as session:
        session.execute(
            insert(Customer),
            [
                {
                    "id": customer_id,
                    "name": f"Planted Name {n}",
                    "email": f"planted{n}@example.com",
                    "phone": f"+4860000{n:04d}",
                    "tags": ["vip"] if n % 2 else [],
                    "key": hashlib.sha256(customer_id.encode()).digest(),
                    "created_at": now,
                }
                for n, customer_id in enumerate(ids)
            ],
        )
    return ids


def add_interactions(
    session_factory: sessionmaker[Session], customer_ids: list[str], at: datetime
) -> None:
    """One interaction record recorded at `at` for each customer."""
    with session_factory.begin() as session:
        pks = dict(
            session.execute(select(Customer.id, Customer.pk).where(Customer.id.in_(customer_ids)))
            .tuples()
            .all()
        )
        session.execute(
            insert(Record),
            [
                {
                    "id": new_id(),
                    "customer_pk": pks[customer_id],
                    "kind": int(RecordKind.INTERACTION),
                    "content": b'{"body":{"type":"call"}}',
                    "commitment": hashlib.sha256(customer_id.encode()).digest(),
                    "created_at": at,
                }
                for customer_id in customer_ids
            ],
        )


def add_points(
    session_factory: sessionmaker[Session], points: dict[str, int], *, status: str = "issued"
) -> None:
    """An issued lot of `points[id]` points for each customer."""
    with session_factory.begin() as session:
        campaign = make_campaign(session, name=f"Campaign {new_id()[:8]}")
        pks = dict(
            session.execute(select(Customer.id, Customer.pk).where(Customer.id.in_(list(points))))
            .tuples()
            .all()
        )
        now = datetime.now(UTC)
        session.execute(
            insert(LoyaltyIssuance),
            [
                {
                    "id": new_id(),
                    "issuance_id": hashlib.sha256(f"{campaign.id}{customer_id}".encode()).digest(),
                    "campaign_pk": campaign.pk,
                    "customer_pk": pks[customer_id],
                    "source": "award",
                    "award_key": f"test:{customer_id}",
                    "points": amount,
                    "remaining": amount,
                    "status": status,
                    "earned_at": now - timedelta(days=1),
                    "issued_at": now,
                }
                for customer_id, amount in points.items()
            ],
        )


async def run_steps(sync: SalesforceSync, *, limit: int = 100) -> int:
    """Step until idle; the items handled."""
    total = 0
    for _ in range(limit):
        handled = await sync.step()
        if handled == 0:
            return total
        total += handled
        await asyncio.sleep(0)
    raise AssertionError(f"the sync did not go idle within {limit} steps")
