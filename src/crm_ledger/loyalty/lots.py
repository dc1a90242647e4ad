"""Lots: planning issuances into the journal, and what customers hold of each campaign.

Exports: `LotStatus`, `plan_lots`, `points_by_customer`.

An issuance is planned in the database before anything is sent: the lot row, with its
deterministic issuance id, commits together with what caused it (an award job, the earning
cursor moving past a record) and with the campaign's `planned_points`, so a crash leaves
both or neither.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import LoyaltyCampaign, LoyaltyIssuance, new_id
from crm_ledger.loyalty.campaigns import expires_at


class LotStatus(enum.StrEnum):
    """Where a lot stands: planned (maybe in a transaction), issued on chain, or failed."""

    PLANNED = "planned"
    ISSUED = "issued"
    FAILED = "failed"


def points_by_customer(
    session: Session, campaign_pk: int, customer_pks: Iterable[int] | None = None
) -> dict[int, int]:
    """Points each customer has had planned or issued by the campaign (failed lots excluded)."""
    query = (
        select(LoyaltyIssuance.customer_pk, func.sum(LoyaltyIssuance.points))
        .where(
            LoyaltyIssuance.campaign_pk == campaign_pk,
            LoyaltyIssuance.status != LotStatus.FAILED.value,
        )
        .group_by(LoyaltyIssuance.customer_pk)
    )
    if customer_pks is not None:
        wanted = list(customer_pks)
        if len(wanted) <= 1000:
            query = query.where(LoyaltyIssuance.customer_pk.in_(wanted))
    return {int(pk): int(total) for pk, total in session.execute(query).tuples()}


def plan_lots(
    session: Session,
    campaign: LoyaltyCampaign,
    lots: list[dict[str, Any]],
    *,
    earned_at: datetime,
) -> int:
    """Insert planned lots of `campaign` and add them to its planned points; returns the total.

    Each dict holds `issuance_id`, `customer_pk`, `source`, `award_key`, `points` and
    optionally `record_pk`, `job_pk`, `earned_at`.
    """
    if not lots:
        return 0
    rows = []
    total = 0
    for lot in lots:
        earned = lot.get("earned_at", earned_at)
        rows.append(
            {
                "id": new_id(),
                "issuance_id": lot["issuance_id"],
                "campaign_pk": campaign.pk,
                "customer_pk": lot["customer_pk"],
                "source": lot["source"],
                "award_key": lot["award_key"],
                "record_pk": lot.get("record_pk"),
                "job_pk": lot.get("job_pk"),
                "points": lot["points"],
                "remaining": lot["points"],
                "status": LotStatus.PLANNED.value,
                "earned_at": earned,
                "expires_at": expires_at(campaign, earned),
            }
        )
        total += lot["points"]
    for start in range(0, len(rows), 2000):
        session.execute(insert(LoyaltyIssuance), rows[start : start + 2000])
    campaign.planned_points += total
    session.flush()
    return total
