"""Expiry: burn what is left of lots past their expiry, oldest first, and say why.

Exports: `ExpirationStatus`, `plan_expirations`.

Each campaign's policy gives its lots an `expires_at` (earned + period). A scheduled round takes
issued lots past it that still hold points, oldest expiry first, records an expiration per lot
(the points left, a sentence saying which policy expired them, and the opaque reason code the
chain gets), zeroes the lot, and groups the expirations of each campaign into `expireBatch`
transactions, all in one commit. The burn id is the lot's own issuance id, so a retried batch
burns each lot once. Lots not yet issued on chain wait until they are.
"""

from __future__ import annotations

import enum
from datetime import datetime
from itertools import groupby

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import (
    LoyaltyCampaign,
    LoyaltyChainOp,
    LoyaltyExpiration,
    LoyaltyIssuance,
)
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.loyalty.campaigns import campaign_public
from crm_ledger.loyalty.ids import expiry_reason_code
from crm_ledger.loyalty.lots import LotStatus


class ExpirationStatus(enum.StrEnum):
    """pending until the burn is on chain (expired); failed if the chain refused it."""

    PENDING = "pending"
    EXPIRED = "expired"
    FAILED = "failed"


def plan_expirations(
    session_factory: sessionmaker[Session], *, now: datetime, max_entries: int, limit: int = 5000
) -> int:
    """Plan the expiry of up to `limit` expired lots; returns how many."""
    with session_factory() as session, session.begin():
        lots = list(
            session.scalars(
                select(LoyaltyIssuance)
                .where(
                    LoyaltyIssuance.status == LotStatus.ISSUED.value,
                    LoyaltyIssuance.remaining > 0,
                    LoyaltyIssuance.expires_at <= now,
                )
                .order_by(LoyaltyIssuance.expires_at, LoyaltyIssuance.pk)
                .limit(limit)
                .with_for_update()
            )
        )
        if not lots:
            return 0
        campaigns = {
            c.pk: c
            for c in session.scalars(
                select(LoyaltyCampaign).where(
                    LoyaltyCampaign.pk.in_({lot.campaign_pk for lot in lots})
                )
            )
        }
        lots.sort(key=lambda lot: (lot.campaign_pk, lot.issuance_id))
        for campaign_pk, grouped in groupby(lots, key=lambda lot: lot.campaign_pk):
            campaign = campaigns[campaign_pk]
            members = list(grouped)
            for start in range(0, len(members), max_entries):
                chunk = members[start : start + max_entries]
                op = LoyaltyChainOp(
                    kind="expire", campaign_pk=campaign_pk, status="planned", entries=len(chunk)
                )
                session.add(op)
                session.flush()
                for lot in chunk:
                    session.add(_expiration(campaign, lot, op.pk))
                    lot.remaining = 0
        session.flush()
        return len(lots)


def _expiration(campaign: LoyaltyCampaign, lot: LoyaltyIssuance, op_pk: int) -> LoyaltyExpiration:
    assert lot.expires_at is not None and lot.address is not None
    policy = campaign_public(campaign).points_expire_after
    reason = (
        f"{lot.remaining} of the {lot.points} points of lot {lot.id} were unused at "
        f"{format_timestamp(lot.expires_at)}: campaign {campaign.name!r} ({campaign.id}) lets "
        f"points expire {policy} after they are earned, and these were earned "
        f"{format_timestamp(lot.earned_at)}"
    )
    return LoyaltyExpiration(
        issuance_pk=lot.pk,
        burn_id=lot.issuance_id,
        customer_pk=lot.customer_pk,
        address=lot.address,
        points=lot.remaining,
        reason=reason,
        reason_code=expiry_reason_code(campaign.onchain_id),
        status=ExpirationStatus.PENDING.value,
        op_pk=op_pk,
    )
