"""Earning: rules, and rewards planned once per anchored record, in seq order, across restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.anchoring.anchorer import Anchorer, DeploymentRef
from crm_ledger.db.models import Customer, LoyaltyCursor, LoyaltyIssuance, Record
from crm_ledger.ledger.canonical import canonical_json, commitment
from crm_ledger.ledger.leaf import RecordKind
from crm_ledger.loyalty.earning import compute_reward, plan_earnings
from crm_ledger.loyalty.ids import earning_issuance_id
from tests.anchoring.fakes import CODE_HASH, FakeChain, fast_settings, make_customer
from tests.loyalty.fakes import make_campaign

RULES: list[dict[str, Any]] = [
    {"type": "order_total", "points_per_unit": "1.5", "currency": "EUR"},
    {"type": "interaction", "interaction_type": "review", "points": 20},
    {"type": "tag_multiplier", "tag": "gold", "multiplier": "2"},
    {"type": "tag_multiplier", "tag": "silver", "multiplier": "1.25"},
]


def order_body(total: str, *, status: str = "paid", number: str = "SO-1", currency: str = "EUR"):  # type: ignore[no-untyped-def]
    return {"order_number": number, "total": total, "currency": currency, "status": status}


@pytest.mark.parametrize(
    ("kind", "body", "tags", "points"),
    [
        (RecordKind.ORDER, order_body("25.00"), [], 37),
        (RecordKind.ORDER, order_body("25.00"), ["gold"], 74),
        (RecordKind.ORDER, order_body("25.00"), ["gold", "silver"], 74),
        (RecordKind.ORDER, order_body("25.00"), ["silver"], 46),
        (RecordKind.ORDER, order_body("25.00", currency="USD"), [], 0),
        (RecordKind.ORDER, order_body("25.00", status="pending"), [], 0),
        (RecordKind.ORDER, order_body("25.00", status="refunded"), [], 0),
        (RecordKind.ORDER, order_body("0.60"), [], 0),
        (RecordKind.INTERACTION, {"type": "review"}, ["gold"], 40),
        (RecordKind.INTERACTION, {"type": "support_call"}, ["gold"], 0),
        (RecordKind.ERASURE, {}, [], 0),
    ],
)
def test_rules(kind: RecordKind, body: dict[str, Any], tags: list[str], points: int) -> None:
    assert compute_reward(RULES, kind=kind, body=body, tags=tags) == points


def add_record(
    session: Session, customer: Customer, kind: RecordKind, body: dict[str, Any]
) -> Record:
    record = Record(customer_pk=customer.pk, kind=int(kind), commitment=b"")
    session.add(record)
    session.flush()
    content = canonical_json(
        {
            "v": 1,
            "id": record.id,
            "customer_id": customer.id,
            "kind": kind.name.lower(),
            "recorded_at": datetime.now(UTC).isoformat(),
            "body": body,
        }
    )
    assert customer.key is not None
    record.content, record.commitment = content, commitment(customer.key, content)
    return record


async def anchor_everything(session_factory: sessionmaker[Session], tmp_path: Path) -> None:
    anchorer = Anchorer(
        session_factory=session_factory,
        chain=FakeChain(),
        deployment=DeploymentRef(
            epoch=1, address="0x" + "11" * 20, code_hash=CODE_HASH, block_number=0
        ),
        settings=fast_settings(tmp_path),
    )
    while await anchorer.step():
        pass


@pytest.mark.asyncio
async def test_anchored_records_earn_once_in_order(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_factory() as session, session.begin():
        campaign = make_campaign(session, rules=RULES, per_customer_cap=100)
        campaign_id = campaign.id
        ada = make_customer(session, tags=["gold"])
        bob = make_customer(session, name="Bob")
        add_record(session, ada, RecordKind.ORDER, order_body("10.00", status="pending"))
        add_record(session, ada, RecordKind.ORDER, order_body("10.00"))  # 15 * 2 = 30
        add_record(session, ada, RecordKind.ORDER, order_body("10.00", status="shipped"))  # same
        add_record(session, ada, RecordKind.INTERACTION, {"type": "review"})  # 40
        add_record(session, ada, RecordKind.INTERACTION, {"type": "review"})  # 40, cut to 30
        add_record(session, bob, RecordKind.INTERACTION, {"type": "review"})  # 20
    # Nothing is anchored yet: nothing earns, the cursor stays.
    assert plan_earnings(session_factory) == 0
    await anchor_everything(session_factory, tmp_path)
    assert plan_earnings(session_factory) == 6
    assert plan_earnings(session_factory) == 0
    with session_factory() as session:
        lots = session.scalars(select(LoyaltyIssuance).order_by(LoyaltyIssuance.pk)).all()
        seqs = dict(session.execute(select(Record.pk, Record.seq)).tuples().all())
        cursor = session.get(LoyaltyCursor, "earning")
        assert cursor is not None and cursor.position == 6
    assert [lot.points for lot in lots] == [30, 40, 30, 20]
    assert sum(lot.points for lot in lots if lot.customer_pk == ada.pk) == 100
    for lot in lots:
        assert lot.record_pk is not None
        assert lot.issuance_id == earning_issuance_id(campaign_id, seqs[lot.record_pk])
    # Ids of consecutive records share their first 28 bytes (one storage word on chain).
    assert len({lot.issuance_id[:28] for lot in lots}) == 1


@pytest.mark.asyncio
async def test_with_no_campaign_that_can_earn_the_planner_moves_on_without_reading_content(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Records anchored while no active campaign has rules earn nothing; the planner passes
    them without loading their content (a bulk load of 100,000 records read every one)."""
    with session_factory() as session, session.begin():
        paused = make_campaign(session, name="Paused", rules=RULES)
        paused.status = "paused"
        make_campaign(session, name="No rules", rules=[])
        customer = make_customer(session, tags=["gold"])
        for _ in range(3):
            add_record(session, customer, RecordKind.INTERACTION, {"type": "review"})
    await anchor_everything(session_factory, tmp_path)
    statements: list[str] = []
    engine = session_factory.kw["bind"]
    listen = event.listens_for(engine, "before_cursor_execute")

    @listen
    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    try:
        assert plan_earnings(session_factory) == 3
        assert plan_earnings(session_factory) == 0
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    with session_factory() as session:
        cursor = session.get(LoyaltyCursor, "earning")
        assert cursor is not None and cursor.position == 3
        assert session.scalars(select(LoyaltyIssuance)).all() == []
    reads = [s for s in statements if "FROM records" in s]
    assert reads and not any("records.content" in s for s in reads), reads


@pytest.mark.asyncio
async def test_paused_campaigns_and_closed_windows_earn_nothing(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_factory() as session, session.begin():
        paused = make_campaign(session, name="Paused", rules=RULES)
        paused.status = "paused"
        make_campaign(session, name="Later", rules=RULES, starts_at="2999-01-01T00:00:00Z")
        make_campaign(session, name="Small", rules=RULES, budget=5)
        customer = make_customer(session)
        add_record(session, customer, RecordKind.INTERACTION, {"type": "review"})
    await anchor_everything(session_factory, tmp_path)
    assert plan_earnings(session_factory) == 1
    with session_factory() as session:
        lots = session.scalars(select(LoyaltyIssuance)).all()
    # Only the small campaign earns, cut to its budget.
    assert [lot.points for lot in lots] == [5]
