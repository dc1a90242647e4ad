"""The bi_* views on SQLite and PostgreSQL: each read back over known data, figure by figure."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import (
    Batch,
    Customer,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyLotUse,
    LoyaltyRedemption,
    Record,
)
from crm_ledger.ledger.canonical import canonical_json
from crm_ledger.ledger.leaf import RecordKind
from tests.anchoring.fakes import make_customer
from tests.loyalty.fakes import make_campaign

D1 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
D2 = datetime(2026, 11, 2, 23, 30, tzinfo=UTC)
D3 = datetime(2026, 11, 3, 0, 15, tzinfo=UTC)
PERSONAL = ("Planted Person", "planted@example.com", "+48600111222", "secret detail")


def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _record(
    session: Session, customer: Customer, kind: RecordKind, body: dict[str, Any], at: datetime
) -> Record:
    record = Record(customer_pk=customer.pk, kind=int(kind), commitment=_digest(str(body)))
    session.add(record)
    session.flush()
    record.created_at = at
    record.content = canonical_json(
        {
            "v": 1,
            "id": record.id,
            "customer_id": customer.id,
            "kind": kind.name.lower(),
            "recorded_at": at.isoformat(),
            "body": body,
        }
    )
    return record


def _seed(session_factory: sessionmaker[Session]) -> dict[str, Any]:
    with session_factory.begin() as session:
        ada = make_customer(
            session,
            name=PERSONAL[0],
            email=PERSONAL[1],
            phone=PERSONAL[2],
            tags=["vip"],
            key=_digest("ada"),
        )
        bob = Customer(tags=[], key=None, erased_at=D3)
        session.add(bob)
        session.flush()
        call = _record(
            session,
            ada,
            RecordKind.INTERACTION,
            {
                "type": "call",
                "channel": "phone",
                "occurred_at": "2026-11-01T09:00:00Z",
                "details": {"note": PERSONAL[3]},
            },
            D1,
        )
        _record(
            session,
            ada,
            RecordKind.INTERACTION,
            {"type": "visit", "channel": "store", "occurred_at": "2026-11-02T09:00:00Z"},
            D2,
        )
        order = _record(
            session,
            ada,
            RecordKind.ORDER,
            {
                "order_number": "A-1",
                "lines": [],
                "total": "12.50",
                "currency": "EUR",
                "status": "paid",
            },
            D2,
        )
        erased = _record(session, bob, RecordKind.INTERACTION, {"type": "call"}, D1)
        erased.content = None
        session.add(
            Batch(
                id=1,
                first_seq=0,
                count=1,
                root=_digest("root"),
                previous_head=bytes(32),
                head=_digest("head"),
                status="anchored",
                block_number=7,
                anchored_at=D2,
            )
        )
        session.flush()
        call.seq, call.batch_id = 0, 1

        campaign = make_campaign(session, name="Spring", budget=1000)
        campaign.planned_points, campaign.issued_points = 180, 150
        lots = {}
        for name, customer, points, status in [
            ("ada", ada, 100, "issued"),
            ("bob", bob, 50, "issued"),
            ("ada-next", ada, 30, "planned"),
        ]:
            lot = LoyaltyIssuance(
                issuance_id=_digest(name),
                campaign_pk=campaign.pk,
                customer_pk=customer.pk,
                source="award",
                award_key=name,
                points=points,
                remaining=points,
                status=status,
                earned_at=D1,
            )
            session.add(lot)
            lots[name] = lot
        session.flush()
        redemption = LoyaltyRedemption(
            customer_pk=ada.pk,
            points=40,
            reward_ref="mug",
            burn_id=_digest("burn"),
            chain_ref=_digest("ref"),
            address="0x" + "11" * 20,
            status="redeemed",
            redeemed_at=D2,
        )
        refused = LoyaltyRedemption(
            customer_pk=ada.pk,
            points=5,
            reward_ref="pen",
            burn_id=_digest("burn2"),
            chain_ref=_digest("ref2"),
            address="0x" + "11" * 20,
            status="failed",
        )
        session.add_all([redemption, refused])
        session.flush()
        session.add(
            LoyaltyLotUse(redemption_pk=redemption.pk, issuance_pk=lots["ada"].pk, points=40)
        )
        session.add(LoyaltyLotUse(redemption_pk=refused.pk, issuance_pk=lots["ada"].pk, points=5))
        lots["ada"].remaining = 60
        session.add(
            LoyaltyExpiration(
                issuance_pk=lots["bob"].pk,
                burn_id=_digest("exp"),
                customer_pk=bob.pk,
                address="0x" + "22" * 20,
                points=50,
                reason="expired",
                reason_code=_digest("why"),
                status="expired",
                expired_at=D3,
            )
        )
        lots["bob"].remaining = 0
        return {
            "ada": ada.id,
            "bob": bob.id,
            "call": call.id,
            "order": order.id,
            "erased": erased.id,
            "campaign": campaign.id,
        }


def _read(engine: Engine, view: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(f"SELECT * FROM {view}"))]


def _moment(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value.astimezone(UTC) if value is not None else None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def test_every_view_reads_back_the_known_figures(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    ids = _seed(session_factory)

    customers = {row["customer_id"]: row for row in _read(engine, "bi_customers")}
    ada, bob = customers[ids["ada"]], customers[ids["bob"]]
    tags = ada["tags"] if isinstance(ada["tags"], list) else json.loads(ada["tags"])
    assert tags == ["vip"]
    assert (ada["interaction_count"], ada["order_count"], ada["record_count"]) == (2, 1, 3)
    assert _moment(ada["first_interaction_at"]) == D1
    assert _moment(ada["last_interaction_at"]) == D2
    assert (ada["loyalty_balance"], ada["loyalty_pending"], bool(ada["erased"])) == (60, 30, False)
    assert (bob["record_count"], bob["loyalty_balance"], bool(bob["erased"])) == (1, 0, True)

    records = {row["record_id"]: row for row in _read(engine, "bi_records")}
    assert len(records) == 4
    call, order, erased = records[ids["call"]], records[ids["order"]], records[ids["erased"]]
    assert (call["kind"], call["interaction_type"], call["channel"]) == (
        "interaction",
        "call",
        "phone",
    )
    assert call["occurred_at"] == "2026-11-01T09:00:00Z"
    assert (call["ledger_state"], call["seq"], call["batch_id"], call["block_number"]) == (
        "anchored",
        0,
        1,
        7,
    )
    assert _moment(call["anchored_at"]) == D2 and _moment(call["recorded_at"]) == D1
    assert (order["kind"], order["order_status"], order["currency"]) == ("order", "paid", "EUR")
    assert Decimal(str(order["order_total"])) == Decimal("12.5")
    assert order["interaction_type"] is None and order["ledger_state"] == "pending"
    assert bool(erased["content_erased"]) and erased["interaction_type"] is None
    assert erased["customer_id"] == ids["bob"]

    ledger = sorted(
        (_day(row["day"]), row["campaign_name"], row["earned"], row["redeemed"], row["expired"])
        for row in _read(engine, "bi_loyalty_ledger")
    )
    assert ledger == [
        (date(2026, 11, 1), "Spring", 150, 0, 0),
        (date(2026, 11, 2), "Spring", 0, 40, 0),
        (date(2026, 11, 3), "Spring", 0, 0, 50),
    ]

    (campaign,) = _read(engine, "bi_campaigns")
    assert campaign["campaign_id"] == ids["campaign"]
    assert (
        campaign["budget"],
        campaign["spent"],
        campaign["committed"],
        campaign["remaining"],
    ) == (1000, 150, 30, 820)
    assert campaign["status"] == "active"


def test_no_view_has_a_personal_field_or_value(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    _seed(session_factory)
    for view in ("bi_customers", "bi_records", "bi_loyalty_ledger", "bi_campaigns"):
        rows = _read(engine, view)
        assert rows, view
        assert not {"name", "email", "phone", "details", "content", "key"} & set(rows[0]), view
        dumped = json.dumps(rows, default=str)
        for value in PERSONAL:
            assert value not in dumped, (view, value)
