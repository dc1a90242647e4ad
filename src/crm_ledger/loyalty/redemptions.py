"""Redemptions: take points from the customer's oldest lots, then burn them on chain.

Exports: `RedemptionStatus`, `create_redemption`, `get_redemption`, `redemption_public`,
`available_lots`.

A redemption commits in the journal first, with the lots it draws from (oldest first, as Open
Loyalty spends its points transfers) already reduced, so two redemptions can never spend the
same points; the worker then burns them with `redeem(burn id, address, points, ref)`. The burn
id derives from the redemption id, so however often the transaction is retried, the chain burns
once. Only points confirmed on chain, unexpired and not reserved count as the balance.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Customer,
    LoyaltyIssuance,
    LoyaltyLotUse,
    LoyaltyRedemption,
    new_id,
    utcnow,
)
from crm_ledger.errors import Conflict, NotFound
from crm_ledger.journal.customers import get_customer
from crm_ledger.journal.schemas import format_timestamp, is_public_id, shorten
from crm_ledger.loyalty.ids import redemption_burn_id, reward_ref_code
from crm_ledger.loyalty.lots import LotStatus
from crm_ledger.loyalty.schemas import RedemptionCreate, RedemptionPublic
from crm_ledger.loyalty.wallets import customer_address


class RedemptionStatus(enum.StrEnum):
    """pending until the burn is on chain (redeemed); failed if the chain refused it."""

    PENDING = "pending"
    REDEEMED = "redeemed"
    FAILED = "failed"


def available_lots(
    session: Session, customer_pk: int, address: str, now: datetime, *, lock: bool = False
) -> list[LoyaltyIssuance]:
    """The customer's spendable lots at `address`, oldest first."""
    query = (
        select(LoyaltyIssuance)
        .where(
            LoyaltyIssuance.customer_pk == customer_pk,
            LoyaltyIssuance.address == address,
            LoyaltyIssuance.status == LotStatus.ISSUED.value,
            LoyaltyIssuance.remaining > 0,
            or_(LoyaltyIssuance.expires_at.is_(None), LoyaltyIssuance.expires_at > now),
        )
        .order_by(LoyaltyIssuance.earned_at, LoyaltyIssuance.pk)
    )
    if lock:
        query = query.with_for_update()
    return list(session.scalars(query))


def create_redemption(*, session: Session, payload: RedemptionCreate) -> LoyaltyRedemption:
    """Reserve `points` from the customer's oldest lots and queue the burn.

    Raises `NotFound` for an unknown customer and `Conflict` (with `balance`) when the customer
    has fewer spendable points than asked.
    """
    now = utcnow()
    customer = get_customer(session=session, customer_id=payload.customer_id)
    wallet = customer_address(session, customer.pk)
    lots = available_lots(session, customer.pk, wallet.address, now, lock=True) if wallet else []
    balance = sum(lot.remaining for lot in lots)
    if payload.points > balance:
        raise Conflict(
            f"the customer has {balance} points to spend and the redemption asks for "
            f"{payload.points}; nothing was redeemed",
            balance=balance,
            requested_points=payload.points,
        )
    assert wallet is not None
    redemption_id = new_id()
    redemption = LoyaltyRedemption(
        id=redemption_id,
        customer_pk=customer.pk,
        points=payload.points,
        reward_ref=payload.reward_ref,
        burn_id=redemption_burn_id(redemption_id),
        chain_ref=reward_ref_code(redemption_id, payload.reward_ref),
        address=wallet.address,
        status=RedemptionStatus.PENDING.value,
        created_at=now,
    )
    session.add(redemption)
    session.flush()
    left = payload.points
    for lot in lots:
        if left == 0:
            break
        taken = min(left, lot.remaining)
        lot.remaining -= taken
        left -= taken
        session.add(LoyaltyLotUse(redemption_pk=redemption.pk, issuance_pk=lot.pk, points=taken))
    session.flush()
    return redemption


def get_redemption(*, session: Session, redemption_id: str) -> LoyaltyRedemption:
    """The redemption `redemption_id`; raises `NotFound`."""
    found = None
    if is_public_id(redemption_id):
        found = session.scalars(
            select(LoyaltyRedemption).where(LoyaltyRedemption.id == redemption_id.lower())
        ).first()
    if found is None:
        shown = shorten(redemption_id)
        raise NotFound(f"no redemption with id {shown!r}", redemption_id=shown)
    return found


def redemption_public(session: Session, redemption: LoyaltyRedemption) -> RedemptionPublic:
    """The public form of a redemption."""
    customer_id = session.scalar(select(Customer.id).where(Customer.pk == redemption.customer_pk))
    return RedemptionPublic(
        id=redemption.id,
        customer_id=str(customer_id),
        points=redemption.points,
        reward_ref=redemption.reward_ref,
        status=redemption.status,
        burn_id="0x" + redemption.burn_id.hex(),
        address=redemption.address,
        tx_hash="0x" + redemption.tx_hash.hex() if redemption.tx_hash else None,
        block_number=redemption.block_number,
        error=redemption.error,
        created_at=format_timestamp(redemption.created_at),
        redeemed_at=format_timestamp(redemption.redeemed_at) if redemption.redeemed_at else None,
    )
