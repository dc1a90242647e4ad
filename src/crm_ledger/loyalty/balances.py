"""A customer's loyalty account as the journal knows it: address, lots, balances, history.

Exports: `loyalty_account`, `live_points`, `HISTORY_LIMIT`.

The API adds what the chain says (`balanceOf`) next to it, so a reader sees both. `available`
counts issued, unexpired lots less what redemptions took; `pending` what is planned but not on
chain yet; `reserved` redemptions whose burn is not on chain yet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    LoyaltyCampaign,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyRedemption,
)
from crm_ledger.journal.customers import get_customer
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.ledger.hexcodec import hex0x_or_none
from crm_ledger.loyalty.lots import LotStatus
from crm_ledger.loyalty.redemptions import RedemptionStatus, available_lots
from crm_ledger.loyalty.schemas import HistoryEntry, LotPublic, LoyaltyAccountPublic
from crm_ledger.loyalty.wallets import WalletKeyring, customer_address

#: The most lots and history entries one answer lists (newest first).
HISTORY_LIMIT = 200


def live_points(session: Session, customer_pk: int) -> int:
    """Points the customer holds or is owed: lots not failed, and burns not yet on chain."""
    lots = session.scalar(
        select(func.coalesce(func.sum(LoyaltyIssuance.remaining), 0)).where(
            LoyaltyIssuance.customer_pk == customer_pk,
            LoyaltyIssuance.status != LotStatus.FAILED.value,
        )
    )
    burning = session.scalar(
        select(func.coalesce(func.sum(LoyaltyRedemption.points), 0)).where(
            LoyaltyRedemption.customer_pk == customer_pk,
            LoyaltyRedemption.status == RedemptionStatus.PENDING.value,
        )
    )
    return int(lots or 0) + int(burning or 0)


def loyalty_account(
    *,
    session: Session,
    customer_id: str,
    keyring: WalletKeyring | None,
    now: datetime,
) -> LoyaltyAccountPublic:
    """The account without chain figures (`chain_balance` None); raises `NotFound`."""
    customer = get_customer(session=session, customer_id=customer_id)
    address, kind = _address_of(session, customer.pk, keyring)
    campaigns = dict(session.execute(select(LoyaltyCampaign.pk, LoyaltyCampaign.id)).tuples().all())
    lots = _newest(session, LoyaltyIssuance, customer.pk)
    spendable = available_lots(session, customer.pk, address, now) if address else []
    pending = session.scalar(
        select(func.coalesce(func.sum(LoyaltyIssuance.points), 0)).where(
            LoyaltyIssuance.customer_pk == customer.pk,
            LoyaltyIssuance.status == LotStatus.PLANNED.value,
        )
    )
    reserved = session.scalar(
        select(func.coalesce(func.sum(LoyaltyRedemption.points), 0)).where(
            LoyaltyRedemption.customer_pk == customer.pk,
            LoyaltyRedemption.status == RedemptionStatus.PENDING.value,
        )
    )
    history = _history(
        lots,
        _newest(session, LoyaltyRedemption, customer.pk),
        _newest(session, LoyaltyExpiration, customer.pk),
        campaigns,
    )
    return LoyaltyAccountPublic(
        customer_id=customer.id,
        address=address,
        address_kind=kind,
        token=None,
        chain_balance=None,
        chain_error=None,
        available=sum(lot.remaining for lot in spendable),
        pending=int(pending or 0),
        reserved=int(reserved or 0),
        lots=[
            LotPublic(
                issuance_id="0x" + lot.issuance_id.hex(),
                campaign_id=campaigns.get(lot.campaign_pk, ""),
                source=lot.source,
                points=lot.points,
                remaining=lot.remaining,
                status=lot.status,
                earned_at=format_timestamp(lot.earned_at),
                expires_at=format_timestamp(lot.expires_at) if lot.expires_at else None,
                tx_hash=hex0x_or_none(lot.tx_hash),
            )
            for lot in lots
        ],
        history=history[:HISTORY_LIMIT],
    )


def _address_of(
    session: Session, customer_pk: int, keyring: WalletKeyring | None
) -> tuple[str | None, str | None]:
    """The customer's address and its kind (linked or custodial), or (None, None)."""
    wallet = customer_address(session, customer_pk)
    if wallet is not None:
        return wallet.address, "linked" if wallet.linked_at else "custodial"
    if keyring is not None:
        return keyring.address(keyring.index_of(customer_pk)), "custodial"
    return None, None


_Row = TypeVar("_Row", LoyaltyIssuance, LoyaltyRedemption, LoyaltyExpiration)


def _newest(session: Session, model: type[_Row], customer_pk: int) -> list[_Row]:
    """The customer's newest `HISTORY_LIMIT` rows of `model`, newest first."""
    return list(
        session.scalars(
            select(model)
            .where(model.customer_pk == customer_pk)
            .order_by(model.pk.desc())
            .limit(HISTORY_LIMIT)
        )
    )


def _history(
    lots: list[LoyaltyIssuance],
    redemptions: list[LoyaltyRedemption],
    expirations: list[LoyaltyExpiration],
    campaigns: dict[int, str],
) -> list[HistoryEntry]:
    """Issues, redemptions and expiries as one history, newest first."""
    history = [
        _entry(
            "issue", lot, lot.issued_at or lot.earned_at, campaign_id=campaigns.get(lot.campaign_pk)
        )
        for lot in lots
    ]
    history += [
        _entry(
            "redeem",
            redemption,
            redemption.redeemed_at or redemption.created_at,
            redemption_id=redemption.id,
            reward_ref=redemption.reward_ref,
        )
        for redemption in redemptions
    ]
    history += [
        _entry(
            "expire",
            expiration,
            expiration.expired_at or expiration.created_at,
            reason=expiration.reason,
        )
        for expiration in expirations
    ]
    history.sort(key=lambda entry: entry.at, reverse=True)
    return history


def _entry(
    kind: Literal["issue", "redeem", "expire"],
    row: LoyaltyIssuance | LoyaltyRedemption | LoyaltyExpiration,
    at: datetime,
    **details: Any,
) -> HistoryEntry:
    """One history entry: what every kind has (points, status, time, transaction), and
    `details` of its own."""
    return HistoryEntry(
        type=kind,
        points=row.points,
        status=row.status,
        at=format_timestamp(at),
        tx_hash=hex0x_or_none(row.tx_hash),
        block_number=row.block_number,
        **details,
    )
