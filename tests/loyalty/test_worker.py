"""The issuance worker on a fake token: batches, crashes at every step, chain down, rollbacks.

Every test runs on SQLite and PostgreSQL. "Nothing twice" is checked on the fake chain itself:
each issuance id is minted at most once (`token.mints`) and balances equal the journal's lots.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import (
    LoyaltyAwardJob,
    LoyaltyCampaign,
    LoyaltyChainOp,
    LoyaltyExpiration,
    LoyaltyIssuance,
    utcnow,
)
from crm_ledger.errors import ChainReset, ChainUnavailable
from crm_ledger.loyalty import awards, redemptions
from crm_ledger.loyalty.expiry import plan_expirations
from crm_ledger.loyalty.schemas import AwardCreate, RedemptionCreate
from crm_ledger.loyalty.worker import IssuanceWorker
from tests.loyalty.conftest import loyalty_settings
from tests.loyalty.fakes import Crash, FakeToken, backdate, crash_at, make_campaign, make_customers
from tests.spying import record_calls

MakeWorker = Callable[..., IssuanceWorker]
pytestmark = pytest.mark.asyncio


def award(
    session_factory: sessionmaker[Session],
    customer_ids: list[str],
    *,
    points: int = 10,
    **campaign: object,
) -> tuple[str, str]:
    """A campaign and an award job to `customer_ids`; (campaign id, job id)."""
    with session_factory() as session, session.begin():
        made = make_campaign(session, **campaign)
        job = awards.plan_award(
            session=session,
            campaign_id=made.id,
            payload=AwardCreate(points=points, customer_ids=customer_ids),
            max_recipients=10_000,
            chain_remaining=None,
        )
        return made.id, job.id


def assert_chain_matches_journal(session_factory: sessionmaker[Session], token: FakeToken) -> None:
    """Every id minted at most once, and each holder's balance is what the journal says."""
    assert max(token.mints.values(), default=0) <= 1
    with session_factory() as session:
        expected: Counter[str] = Counter()
        for address, remaining in session.execute(
            select(LoyaltyIssuance.address, LoyaltyIssuance.remaining).where(
                LoyaltyIssuance.status == "issued"
            )
        ).tuples():
            assert address is not None
            expected[address] += remaining
    assert +token.balances == +expected


async def run_until_idle(worker: IssuanceWorker, rounds: int = 10) -> None:
    for _ in range(rounds):
        if not await worker.step():
            return
    raise AssertionError("the worker kept finding work")


async def test_award_goes_out_in_as_few_batches_as_allowed(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    customers = make_customers(session_factory, 45)
    award(session_factory, [cid for _, cid in customers], points=7)
    await run_until_idle(make_worker())
    assert token.sent["issueBatch"] == math.ceil(45 / 20)
    assert token.sent["setCampaignBudget"] == 1
    assert token.total_supply == 45 * 7
    assert_chain_matches_journal(session_factory, token)
    with session_factory() as session:
        job = session.scalars(select(LoyaltyAwardJob)).one()
        campaign = session.scalars(select(LoyaltyCampaign)).one()
        assert job.status == "done" and job.finished_at is not None
        assert campaign.issued_points == campaign.planned_points == 45 * 7
        assert campaign.chain_budget == campaign.budget
        progress = awards.job_progress(session, campaign, job)
    assert (progress.issued, progress.pending, progress.failed) == (45, 0, 0)
    assert len(progress.transactions) == 3


@pytest.mark.parametrize("step", ["sent", "marked_sent", "mined", "confirmed"])
async def test_a_crash_at_any_step_issues_nothing_twice_and_drops_nothing(
    session_factory: sessionmaker[Session],
    token: FakeToken,
    make_worker: MakeWorker,
    step: str,
) -> None:
    customers = make_customers(session_factory, 50)
    award(session_factory, [cid for _, cid in customers])
    with pytest.raises(Crash):
        await run_until_idle(make_worker(checkpoint=crash_at(step)))
    # A new process picks up whatever the journal says.
    await run_until_idle(make_worker())
    assert token.total_supply == 500
    assert_chain_matches_journal(session_factory, token)
    with session_factory() as session:
        statuses = Counter(session.scalars(select(LoyaltyIssuance.status)))
        assert statuses == {"issued": 50}
        tx_hashes = session.scalars(select(LoyaltyIssuance.tx_hash)).all()
    # Lots minted by a transaction sent before the crash still carry that transaction.
    assert all(tx is not None for tx in tx_hashes)


async def test_a_chain_that_is_down_makes_the_job_wait(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    customers = make_customers(session_factory, 5)
    award(session_factory, [cid for _, cid in customers])
    token.down = True
    worker = make_worker()
    with pytest.raises(ChainUnavailable):
        await worker.step()
    with session_factory() as session:
        assert Counter(session.scalars(select(LoyaltyIssuance.status))) == {"planned": 5}
    token.down = False
    await run_until_idle(worker)
    assert token.total_supply == 50
    assert_chain_matches_journal(session_factory, token)


async def test_a_rollback_sends_again_what_vanished(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    first = make_customers(session_factory, 30)
    award(session_factory, [cid for _, cid in first])
    worker = make_worker()
    await run_until_idle(worker)
    blocks_before_second = len(token.blocks)
    second = make_customers(session_factory, 10)
    award(session_factory, [cid for _, cid in second])
    await run_until_idle(worker)
    assert token.total_supply == 400
    # The node restarts from an older state: the second award and its budget are gone.
    token.roll_back_to(blocks_before_second)
    assert token.total_supply == 300
    await run_until_idle(worker)
    assert worker.stats.rollbacks_detected == 1
    assert token.total_supply == 400
    assert_chain_matches_journal(session_factory, token)


async def test_a_rollback_inside_a_batch_resends_only_what_is_missing(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    customers = make_customers(session_factory, 40)
    award(session_factory, [cid for _, cid in customers])
    worker = make_worker()
    await run_until_idle(worker)
    # Keep the budget and the first batch, lose the second one.
    token.roll_back_to(2)
    await run_until_idle(worker)
    assert token.total_supply == 400
    assert_chain_matches_journal(session_factory, token)


async def test_a_reset_chain_halts_the_worker(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    token.code_hash_value = b"\x00" * 32
    with pytest.raises(ChainReset, match="LoyaltyToken"):
        await make_worker().step()


async def test_a_batch_over_the_chain_budget_fails_without_sending(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    customers = make_customers(session_factory, 3)
    award(session_factory, [cid for _, cid in customers], budget=100)
    worker = make_worker()
    await worker.sync_budgets()
    # Someone lowered the budget on chain behind the service's back, after the award.
    await token.send_set_budget(next(iter(token.budgets)), 20)
    with session_factory() as session, session.begin():
        session.execute(
            LoyaltyCampaign.__table__.update().values(chain_budget=100)  # type: ignore[attr-defined]
        )
    await run_until_idle(worker)
    assert token.sent["issueBatch"] == 0
    with session_factory() as session:
        assert Counter(session.scalars(select(LoyaltyIssuance.status))) == {"failed": 3}
        job = session.scalars(select(LoyaltyAwardJob)).one()
        assert job.status == "failed"
        campaign = session.scalars(select(LoyaltyCampaign)).one()
        assert campaign.planned_points == 0


async def test_redemption_burns_once_even_after_a_crash(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    ((_, customer_id),) = make_customers(session_factory, 1)
    award(session_factory, [customer_id], points=100)
    await run_until_idle(make_worker())
    with session_factory() as session, session.begin():
        redemption = redemptions.create_redemption(
            session=session,
            payload=RedemptionCreate(customer_id=customer_id, points=30, reward_ref="mug"),
        )
        redemption_id = redemption.id
    with pytest.raises(Crash):
        await run_until_idle(make_worker(checkpoint=crash_at("sent")))
    await run_until_idle(make_worker())
    assert token.sent["redeem"] == 1
    assert token.total_supply == 70
    with session_factory() as session:
        found = redemptions.get_redemption(session=session, redemption_id=redemption_id)
        assert found.status == "redeemed" and found.tx_hash is not None
    assert_chain_matches_journal(session_factory, token)


async def test_a_burn_id_used_before_the_crash_is_adopted(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    ((_, customer_id),) = make_customers(session_factory, 1)
    award(session_factory, [customer_id], points=100)
    await run_until_idle(make_worker())
    with session_factory() as session, session.begin():
        redemptions.create_redemption(
            session=session,
            payload=RedemptionCreate(customer_id=customer_id, points=30, reward_ref="mug"),
        )
    # The process died between sending and recording: the op is still "planned".
    with pytest.raises(Crash):
        await run_until_idle(make_worker(checkpoint=crash_at("sent")))
    with session_factory() as session, session.begin():
        session.execute(
            LoyaltyChainOp.__table__.update()  # type: ignore[attr-defined]
            .where(LoyaltyChainOp.kind == "redeem")
            .values(status="planned", tx_hash=None)
        )
    await run_until_idle(make_worker())
    assert token.sent["redeem"] == 1
    assert token.total_supply == 70


async def test_expiry_burns_expired_remainders_oldest_first_and_says_why(
    session_factory: sessionmaker[Session], token: FakeToken, make_worker: MakeWorker
) -> None:
    customers = make_customers(session_factory, 25)
    award(
        session_factory,
        [cid for _, cid in customers],
        points=10,
        points_expire_after="P30D",
    )
    worker = make_worker()
    await run_until_idle(worker)
    first_id = customers[0][1]
    with session_factory() as session, session.begin():
        redemptions.create_redemption(
            session=session,
            payload=RedemptionCreate(customer_id=first_id, points=4, reward_ref="coffee"),
        )
    await run_until_idle(worker)
    backdate(session_factory, expires_at=utcnow() - timedelta(seconds=1))
    worker.expire_now()
    await run_until_idle(worker)
    assert token.sent["expireBatch"] == 2
    assert token.total_supply == 0
    with session_factory() as session:
        expirations = session.scalars(select(LoyaltyExpiration)).all()
        assert len(expirations) == 25
        assert {e.status for e in expirations} == {"expired"}
        assert sorted(e.points for e in expirations)[0] == 6
        assert all("P30D" in e.reason and "unused" in e.reason for e in expirations)
        assert session.scalar(select(func.sum(LoyaltyIssuance.remaining))) == 0
    assert_chain_matches_journal(session_factory, token)
    # A second round finds nothing more to expire.
    assert plan_expirations(session_factory, now=utcnow(), max_entries=20) == 0


async def test_an_idle_worker_checks_the_chain_once_per_interval_and_before_sending(
    session_factory: sessionmaker[Session],
    token: FakeToken,
    make_worker: MakeWorker,
    tmp_path: Path,
) -> None:
    """An idle worker asks the chain nothing until `anchor_idle_check_seconds` have passed;
    one with something to send checks the chain (and finds a rollback) first."""
    asked = record_calls(token, "code_hash")
    worker = make_worker(settings=loyalty_settings(tmp_path, anchor_idle_check_seconds=1.5))
    first = make_customers(session_factory, 10)
    award(session_factory, [cid for _, cid in first])
    await run_until_idle(worker)
    blocks = len(token.blocks)
    after_work = len(asked)
    for _ in range(10):
        assert not await worker.step()
    assert len(asked) == after_work
    await asyncio.sleep(1.6)
    assert not await worker.step()
    assert len(asked) == after_work + 1

    # Within the interval, a new award and a rollback of the first: the step that sends the
    # new award checks the chain first and sends the vanished one again too.
    token.roll_back_to(blocks - 1)
    second = make_customers(session_factory, 10)
    award(session_factory, [cid for _, cid in second])
    await run_until_idle(worker)
    assert worker.stats.rollbacks_detected == 1
    assert token.total_supply == 200
    assert_chain_matches_journal(session_factory, token)
