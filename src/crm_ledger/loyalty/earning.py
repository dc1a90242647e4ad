"""Earning: rewards for records once they are anchored, planned in journal order.

Exports: `compute_reward`, `plan_earnings`, `EARNING_CURSOR`, `EARNING_STATUSES`.

The cursor `loyalty_cursors["earning"]` holds the next sequence number to reward. Each round
reads anchored records from there in seq order, stops at the first seq that is not anchored yet
(the anchorer anchors in seq order, so nothing after it is skipped), plans the rewards of every
active campaign, and moves the cursor, all in one commit: a crash replays the round, and the
unique (campaign, award key) pair and the deterministic issuance id keep it from planning twice.

What a record earns in a campaign whose window holds the record's time:

- an order with status paid, shipped or delivered: for each `order_total` rule (of its currency,
  or of any), floor(total * points_per_unit); once per order number (a shop order's
  `order_key`) and customer, so a later status record of the same order earns nothing more;
- an interaction: the `points` of each `interaction` rule naming its type;
- then times the highest `tag_multiplier` among the customer's tags, rounded down;
- then cut to what the per-customer cap and the campaign's budget leave. Rewards of 0 plan
  nothing.

Campaigns are read as they are at planning time: a paused campaign earns nothing for records
anchored while it is paused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db.models import (
    Batch,
    BatchStatus,
    Customer,
    LoyaltyCampaign,
    LoyaltyCursor,
    LoyaltyIssuance,
    Record,
    utcnow,
)
from crm_ledger.db.session import reading
from crm_ledger.ledger.leaf import RecordKind
from crm_ledger.loyalty.campaigns import CampaignStatus
from crm_ledger.loyalty.ids import earning_issuance_id
from crm_ledger.loyalty.lots import plan_lots, points_by_customer

EARNING_CURSOR = "earning"
#: Order statuses that earn: the money has been taken.
EARNING_STATUSES = frozenset({"paid", "shipped", "delivered"})


def compute_reward(
    rules: list[dict[str, Any]], *, kind: RecordKind, body: dict[str, Any], tags: list[str]
) -> int:
    """Points a record earns under `rules` before caps and budget (see the module docstring)."""
    base = Decimal(0)
    if kind is RecordKind.ORDER:
        if body.get("status") not in EARNING_STATUSES:
            return 0
        total = Decimal(str(body["total"]))
        for rule in rules:
            if rule["type"] == "order_total" and rule.get("currency") in (None, body["currency"]):
                base += (total * Decimal(rule["points_per_unit"])).to_integral_value(ROUND_FLOOR)
    elif kind is RecordKind.INTERACTION:
        for rule in rules:
            if rule["type"] == "interaction" and rule["interaction_type"] == body.get("type"):
                base += rule["points"]
    else:
        return 0
    multiplier = max(
        (
            Decimal(rule["multiplier"])
            for rule in rules
            if rule["type"] == "tag_multiplier" and rule["tag"] in tags
        ),
        default=Decimal(1),
    )
    return int((base * multiplier).to_integral_value(ROUND_FLOOR))


def _next_record_anchored(session_factory: sessionmaker[Session]) -> bool:
    """Whether the record at the earning cursor is anchored yet (a read-only look)."""
    with reading(session_factory) as session:
        position = session.scalar(
            select(LoyaltyCursor.position).where(LoyaltyCursor.name == EARNING_CURSOR)
        )
        found = session.scalar(
            select(Record.pk)
            .join(Batch, Batch.id == Record.batch_id)
            .where(Record.seq == (position or 0), Batch.status == BatchStatus.ANCHORED.value)
        )
        return found is not None


def plan_earnings(session_factory: sessionmaker[Session], *, limit: int = 1000) -> int:
    """One round: plan the rewards of up to `limit` newly anchored records; returns how many."""
    if not _next_record_anchored(session_factory):
        return 0  # the usual poll: nothing new, and no write transaction taken to learn it
    with session_factory() as session, session.begin():
        cursor = session.get(LoyaltyCursor, EARNING_CURSOR, with_for_update=True)
        if cursor is None:
            cursor = LoyaltyCursor(name=EARNING_CURSOR, position=0, updated_at=utcnow())
            session.add(cursor)
        campaigns = [
            campaign
            for campaign in session.scalars(
                select(LoyaltyCampaign)
                .where(LoyaltyCampaign.status == CampaignStatus.ACTIVE.value)
                .order_by(LoyaltyCampaign.pk)
                .with_for_update()
            )
            if campaign.rules
        ]
        anchored = (
            select(Record.seq)
            .join(Batch, Batch.id == Record.batch_id)
            .where(Record.seq >= cursor.position, Batch.status == BatchStatus.ANCHORED.value)
            .order_by(Record.seq)
            .limit(limit)
        )
        if not campaigns:
            # Nothing can earn: move past the anchored records without reading their content
            # (a campaign only earns for records created while it is active).
            done = _contiguous(cursor.position, session.scalars(anchored))
        else:
            rows = session.execute(
                anchored.add_columns(
                    Record.pk,
                    Record.id,
                    Record.kind,
                    Record.content,
                    Record.customer_pk,
                    Record.created_at,
                    Customer.id.label("customer_id"),
                    Customer.tags,
                    Customer.erased_at,
                ).join(Customer, Customer.pk == Record.customer_pk)
            ).all()
            contiguous = list(rows[: _contiguous(cursor.position, (row.seq for row in rows))])
            for campaign in campaigns:
                _plan_campaign(session, campaign, contiguous)
            done = len(contiguous)
        if not done:
            return 0
        cursor.position += done
        cursor.updated_at = utcnow()
        return done


def _contiguous(start: int, seqs: Iterable[int]) -> int:
    """How many of `seqs` (ascending) follow on from `start` without a gap."""
    count = 0
    for seq in seqs:
        if seq != start + count:
            break
        count += 1
    return count


def _plan_campaign(session: Session, campaign: LoyaltyCampaign, rows: list[Any]) -> None:
    candidates: list[dict[str, Any]] = []
    for row in rows:
        if row.content is None or row.erased_at is not None:
            continue
        if row.created_at < campaign.starts_at or (
            campaign.ends_at is not None and row.created_at >= campaign.ends_at
        ):
            continue
        kind = RecordKind(row.kind)
        body = json.loads(row.content)["body"]
        points = compute_reward(campaign.rules, kind=kind, body=body, tags=list(row.tags or []))
        if points <= 0:
            continue
        # Shop orders (commerce ingest) carry `order_key`, unique across shops.
        key = (
            f"order:{row.customer_id}:{body.get('order_key', body['order_number'])}"
            if kind is RecordKind.ORDER
            else f"record:{row.id}"
        )
        candidates.append(
            {
                "issuance_id": earning_issuance_id(campaign.id, row.seq),
                "customer_pk": row.customer_pk,
                "source": "earning",
                "award_key": key,
                "record_pk": row.pk,
                "points": points,
                "earned_at": row.created_at,
            }
        )
    if not candidates:
        return
    taken = set(
        session.scalars(
            select(LoyaltyIssuance.award_key).where(
                LoyaltyIssuance.campaign_pk == campaign.pk,
                LoyaltyIssuance.award_key.in_([c["award_key"] for c in candidates]),
            )
        )
    )
    used = points_by_customer(session, campaign.pk, {c["customer_pk"] for c in candidates})
    budget_left = campaign.budget - campaign.planned_points
    planned = []
    for candidate in candidates:
        if candidate["award_key"] in taken:
            continue
        points = min(candidate["points"], budget_left)
        if campaign.per_customer_cap is not None:
            points = min(points, campaign.per_customer_cap - used.get(candidate["customer_pk"], 0))
        if points <= 0:
            continue
        candidate["points"] = points
        taken.add(candidate["award_key"])
        used[candidate["customer_pk"]] = used.get(candidate["customer_pk"], 0) + points
        budget_left -= points
        planned.append(candidate)
    plan_lots(session, campaign, planned, earned_at=utcnow())
