"""Loyalty against a real Anvil: a few hundred recipients, crashes, an outage, burns, the service.

Each test deploys its own LoyaltyToken (operator: dev account 1) on a shared Anvil, except the
outage test, which stops and restarts an Anvil of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.app import create_app
from crm_ledger.chain.client import make_async_web3
from crm_ledger.chain.node import LocalNode, start_anvil
from crm_ledger.chain.signer import dev_account
from crm_ledger.config import Settings
from crm_ledger.db.models import LoyaltyCampaign, LoyaltyExpiration, LoyaltyIssuance, utcnow
from crm_ledger.errors import ChainUnavailable, Conflict
from crm_ledger.journal.keys import Role, create_api_key
from crm_ledger.loyalty import redemptions
from crm_ledger.loyalty.chain import LoyaltyToken
from crm_ledger.loyalty.deploy import ensure_token_deployment
from crm_ledger.loyalty.schemas import RedemptionCreate
from crm_ledger.loyalty.wallets import WalletKeyring
from crm_ledger.loyalty.worker import IssuanceWorker, TokenDeploymentRef
from tests.apps import TestClient
from tests.chain.conftest import free_port
from tests.loyalty.conftest import loyalty_settings
from tests.loyalty.fakes import Crash, backdate, make_customers
from tests.loyalty.test_worker import award, run_until_idle
from tests.waiting import wait_for_async

pytestmark = [pytest.mark.chain, pytest.mark.asyncio]


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    with start_anvil(
        port=free_port(), state_path=tmp_path_factory.mktemp("anvil") / "s.json"
    ) as node:
        yield node


@pytest_asyncio.fixture
async def w3(anvil: LocalNode) -> AsyncIterator[Any]:
    w3 = make_async_web3(anvil.rpc_url, 10.0)
    yield w3
    await w3.provider.disconnect()


async def deploy(
    w3: Any, session_factory: sessionmaker[Session], tmp_path: Path
) -> tuple[LoyaltyToken, TokenDeploymentRef]:
    settings = loyalty_settings(tmp_path)
    unbound = LoyaltyToken(w3, dev_account(1), None)
    deployment = await ensure_token_deployment(
        session_factory=session_factory, token=unbound, settings=settings
    )
    ref = TokenDeploymentRef(deployment.address, deployment.code_hash, deployment.block_number)
    return unbound.at(deployment.address), ref


def worker(
    session_factory: sessionmaker[Session],
    token: LoyaltyToken,
    ref: TokenDeploymentRef,
    keyring: WalletKeyring,
    tmp_path: Path,
    **overrides: Any,
) -> IssuanceWorker:
    return IssuanceWorker(
        session_factory=session_factory,
        token=token,
        deployment=ref,
        keyring=keyring,
        settings=loyalty_settings(tmp_path, loyalty_batch_max_entries=100),
        **overrides,
    )


async def assert_holders_hold(session_factory: sessionmaker[Session], token: LoyaltyToken) -> int:
    """Each holder's balanceOf equals its lots' remaining points; returns the total."""
    holdings: dict[str, int] = {}
    with session_factory() as session:
        for address, remaining in session.execute(
            select(LoyaltyIssuance.address, LoyaltyIssuance.remaining).where(
                LoyaltyIssuance.status == "issued"
            )
        ).tuples():
            assert address is not None
            holdings[address] = holdings.get(address, 0) + remaining
    for address, expected in holdings.items():
        assert await token.balance_of(address) == expected, address
    return sum(holdings.values())


async def test_award_of_300_recipients(
    w3: Any, session_factory: sessionmaker[Session], keyring: WalletKeyring, tmp_path: Path
) -> None:
    token, ref = await deploy(w3, session_factory, tmp_path)
    customers = make_customers(session_factory, 300)
    award(session_factory, [cid for _, cid in customers], points=3, budget=900)
    await run_until_idle(worker(session_factory, token, ref, keyring, tmp_path))
    assert await assert_holders_hold(session_factory, token) == 900
    with session_factory() as session:
        lots = session.scalars(select(LoyaltyIssuance)).all()
    assert {lot.status for lot in lots} == {"issued"}
    assert len({lot.tx_hash for lot in lots}) == 3
    onchain = await _campaign_onchain_id(session_factory)
    assert await token.campaign_remaining(onchain) == 0


async def _campaign_onchain_id(session_factory: sessionmaker[Session]) -> bytes:
    with session_factory() as session:
        return session.scalars(select(LoyaltyCampaign.onchain_id)).one()


async def test_a_crash_mid_job_issues_nothing_twice(
    w3: Any, session_factory: sessionmaker[Session], keyring: WalletKeyring, tmp_path: Path
) -> None:
    token, ref = await deploy(w3, session_factory, tmp_path)
    customers = make_customers(session_factory, 250)
    award(session_factory, [cid for _, cid in customers], points=2, budget=1000)
    sent = [0]

    def die_after_second_send(step: str) -> None:
        if step == "sent":
            sent[0] += 1
            if sent[0] == 2:
                raise Crash(step)

    with pytest.raises(Crash):
        await run_until_idle(
            worker(session_factory, token, ref, keyring, tmp_path, checkpoint=die_after_second_send)
        )
    await run_until_idle(worker(session_factory, token, ref, keyring, tmp_path))
    assert await assert_holders_hold(session_factory, token) == 500
    onchain = await _campaign_onchain_id(session_factory)
    assert await token.campaign_remaining(onchain) == 500
    with session_factory() as session:
        assert all(lot.tx_hash for lot in session.scalars(select(LoyaltyIssuance)))


async def test_chain_down_then_up(
    session_factory: sessionmaker[Session], keyring: WalletKeyring, tmp_path: Path
) -> None:
    port, state = free_port(), tmp_path / "anvil" / "state.json"
    node = start_anvil(port=port, state_path=state)
    w3 = make_async_web3(node.rpc_url, 2.0)
    try:
        token, ref = await deploy(w3, session_factory, tmp_path)
        customers = make_customers(session_factory, 20)
        award(session_factory, [cid for _, cid in customers], points=5)
        node.stop()
        down = worker(session_factory, token, ref, keyring, tmp_path)
        with pytest.raises(ChainUnavailable):
            await down.step()
        with session_factory() as session:
            assert {lot.status for lot in session.scalars(select(LoyaltyIssuance))} == {"planned"}
        node = start_anvil(port=port, state_path=state)
        await run_until_idle(down)
        assert await assert_holders_hold(session_factory, token) == 100
    finally:
        await w3.provider.disconnect()
        node.stop()


async def test_redemption_and_expiry_burn_on_chain(
    w3: Any, session_factory: sessionmaker[Session], keyring: WalletKeyring, tmp_path: Path
) -> None:
    token, ref = await deploy(w3, session_factory, tmp_path)
    ((_, customer_id),) = make_customers(session_factory, 1)
    award(session_factory, [customer_id], points=100, points_expire_after="P1D")
    running = worker(session_factory, token, ref, keyring, tmp_path)
    await run_until_idle(running)
    with session_factory() as session, session.begin():
        with pytest.raises(Conflict) as caught:
            redemptions.create_redemption(
                session=session,
                payload=RedemptionCreate(customer_id=customer_id, points=101, reward_ref="tv"),
            )
        assert caught.value.extra["balance"] == 100
    with session_factory() as session, session.begin():
        redemptions.create_redemption(
            session=session,
            payload=RedemptionCreate(customer_id=customer_id, points=30, reward_ref="mug"),
        )
    await run_until_idle(running)
    assert await assert_holders_hold(session_factory, token) == 70
    backdate(session_factory, expires_at=utcnow() - timedelta(seconds=1))
    running.expire_now()
    await run_until_idle(running)
    assert await assert_holders_hold(session_factory, token) == 0
    with session_factory() as session:
        (expiration,) = session.scalars(select(LoyaltyExpiration)).all()
        address = expiration.address
    assert expiration.status == "expired" and expiration.points == 70 and expiration.tx_hash
    assert await token.balance_of(address) == 0
    (event,) = await token.find_events("Expired", [expiration.burn_id], from_block=ref.block_number)
    assert event.amount == 70 and event.tx_hash == expiration.tx_hash


async def test_the_service_earns_points_for_an_anchored_order(
    anvil: LocalNode, tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=database_url,
        rpc_url=anvil.rpc_url,
        batch_max_age_seconds=0.01,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.runtime.session_factory.begin() as session:
            key = {"Authorization": f"Bearer {create_api_key(session, role=Role.ADMIN)}"}
        created = client.post(
            "/v1/campaigns",
            json={
                "name": "Orders",
                "budget": 1000,
                "rules": [{"type": "order_total", "points_per_unit": "2"}],
            },
            headers=key,
        )
        assert created.status_code == 201, created.text
        customer = client.post(
            "/v1/customers", json={"name": "Ada", "email": "ada@example.com"}, headers=key
        ).json()["id"]
        order = {
            "customer_id": customer,
            "order_number": "SO-1",
            "lines": [{"sku": "TEA", "quantity": 2, "unit_price": "10.50"}],
            "total": "21.00",
            "currency": "EUR",
            "status": "paid",
        }
        assert client.post("/v1/orders", json=order, headers=key).status_code == 201

        async def loyalty() -> dict[str, Any]:
            found: dict[str, Any] = client.get(
                f"/v1/customers/{customer}/loyalty", headers=key
            ).json()
            return found

        account = await wait_for_async(
            loyalty,
            60,
            # The chain reports the mint a moment before the worker records it.
            until=lambda found: found.get("chain_balance") == found.get("available") == 42,
            what=lambda: app.state.runtime.chain_status,
            interval=0.2,
        )
        assert account["history"][0]["tx_hash"]
        assert app.state.runtime.chain_status["loyalty"]["state"] == "running"
