"""Loyalty clawback: a refunded or cancelled shop order gives back the points it earned.

Exports: `run_clawbacks`, `list_clawbacks`.

An order marked `clawback_pending` (by `ingest.apply`) waits until loyalty has looked at its
records: its last record is anchored and the earning cursor is past it, and none of its lots is
still on its way to the chain. Then it takes back `floor(earned * refunded / total)` points
(everything for a cancellation or a full refund), less what earlier refunds of the order took
already. The burn is a redemption (`loyalty.redemptions`: oldest lots first, burnt on chain by
the loyalty worker under a burn id derived from the redemption id, so never twice), capped at
the points the customer still holds; what they had already spent is the `shortfall`, kept in
`ingest_clawbacks` and listed by `GET /v1/sources/{id}/clawbacks`.

When no campaign exists the order owes nothing, and is cleared at once.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Customer,
    IngestClawback,
    IngestOrder,
    IngestSource,
    LoyaltyCampaign,
    LoyaltyCursor,
    LoyaltyIssuance,
    LoyaltyRedemption,
    Record,
    utcnow,
)
from crm_ledger.ingest.apply import CLAWBACK_STATUSES, order_key
from crm_ledger.ingest.schemas import ClawbackPublic
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.loyalty.earning import EARNING_CURSOR
from crm_ledger.loyalty.lots import LotStatus
from crm_ledger.loyalty.redemptions import available_lots, create_redemption
from crm_ledger.loyalty.schemas import RedemptionCreate
from crm_ledger.loyalty.wallets import customer_address


def run_clawbacks(session: Session, *, limit: int = 100) -> int:
    """Take back the points of up to `limit` orders that are ready; returns how many were
    settled (flushes; the caller commits)."""
    orders = list(
        session.scalars(
            select(IngestOrder)
            .where(IngestOrder.clawback_pending.is_(True))
            .order_by(IngestOrder.pk)
            .limit(limit)
            .with_for_update()
        )
    )
    if not orders:
        return 0
    any_campaign = session.scalar(select(exists().where(LoyaltyCampaign.pk.is_not(None))))
    cursor = session.get(LoyaltyCursor, EARNING_CURSOR)
    settled = 0
    for order in orders:
        customer = session.get_one(Customer, order.customer_pk)
        if customer.key is None or not any_campaign:
            order.clawback_pending = False
            settled += 1
            continue
        last_seq = session.scalar(select(Record.seq).where(Record.pk == order.last_record_pk))
        if last_seq is None or cursor is None or cursor.position <= last_seq:
            continue
        source_id = session.scalar(
            select(IngestSource.id).where(IngestSource.pk == order.source_pk)
        )
        assert source_id is not None
        lots = list(
            session.scalars(
                select(LoyaltyIssuance).where(
                    LoyaltyIssuance.customer_pk == customer.pk,
                    LoyaltyIssuance.source == "earning",
                    LoyaltyIssuance.award_key
                    == f"order:{customer.id}:{order_key(source_id, order.external_id)}",
                )
            )
        )
        if any(lot.status == LotStatus.PLANNED.value for lot in lots):
            continue
        earned = sum(lot.points for lot in lots if lot.status == LotStatus.ISSUED.value)
        owed = _owed(order, earned) - order.clawed_points
        order.clawback_pending = False
        settled += 1
        if owed <= 0:
            continue
        _burn(session, order, customer, owed)
    session.flush()
    return settled


def _owed(order: IngestOrder, earned: int) -> int:
    total = Decimal(order.total)
    if order.status in CLAWBACK_STATUSES or total <= 0:
        share = Decimal(1)
    else:
        share = min(Decimal(1), Decimal(order.refunded) / total)
    return int((earned * share).to_integral_value(ROUND_FLOOR))


def _burn(session: Session, order: IngestOrder, customer: Customer, owed: int) -> None:
    wallet = customer_address(session, customer.pk)
    balance = 0
    if wallet is not None:
        lots = available_lots(session, customer.pk, wallet.address, utcnow(), lock=True)
        balance = sum(lot.remaining for lot in lots)
    burned = min(owed, balance)
    redemption = None
    if burned > 0:
        redemption = create_redemption(
            session=session,
            payload=RedemptionCreate(
                customer_id=customer.id,
                points=burned,
                reward_ref=f"refund of shop order {order.order_number}"[:200],
            ),
        )
    session.add(
        IngestClawback(
            order_pk=order.pk,
            customer_pk=customer.pk,
            requested_points=owed,
            burned_points=burned,
            shortfall_points=owed - burned,
            redemption_pk=redemption.pk if redemption is not None else None,
            created_at=utcnow(),
        )
    )
    order.clawed_points += owed


def list_clawbacks(session: Session, *, source_pk: int, limit: int = 200) -> list[ClawbackPublic]:
    """The source's clawbacks, newest first."""
    rows = session.execute(
        select(IngestClawback, IngestOrder, Customer.id, LoyaltyRedemption.id)
        .join(IngestOrder, IngestOrder.pk == IngestClawback.order_pk)
        .join(Customer, Customer.pk == IngestClawback.customer_pk)
        .outerjoin(LoyaltyRedemption, LoyaltyRedemption.pk == IngestClawback.redemption_pk)
        .where(IngestOrder.source_pk == source_pk)
        .order_by(IngestClawback.pk.desc())
        .limit(limit)
    ).all()
    return [
        ClawbackPublic(
            order_id=order.external_id,
            order_number=order.order_number,
            customer_id=customer_id,
            requested_points=clawback.requested_points,
            burned_points=clawback.burned_points,
            shortfall_points=clawback.shortfall_points,
            redemption_id=redemption_id,
            created_at=format_timestamp(clawback.created_at),
        )
        for clawback, order, customer_id, redemption_id in rows
    ]
