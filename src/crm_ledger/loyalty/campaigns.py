"""Campaigns: create, read, pause, resume, close; what a campaign may still issue.

Exports: `CampaignStatus`, `create_campaign`, `get_campaign`, `lock_campaign`, `list_campaigns`,
`set_status`, `campaign_public`, `budget_target`, `require_open`, `effective_status`.

A campaign is active from creation. Paused campaigns earn nothing and accept no awards; resuming
reopens them. Closing is final: the worker then lowers the budget on chain to exactly the points
the campaign planned, so nothing more can ever be issued under it, whoever holds the issuer key.
Writers flush but do not commit: the caller owns the transaction.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_ledger.db.models import LoyaltyCampaign, new_id, utcnow
from crm_ledger.errors import Conflict, NotFound
from crm_ledger.journal.schemas import format_timestamp, is_public_id, shorten
from crm_ledger.loyalty.ids import new_campaign_onchain_id
from crm_ledger.loyalty.schemas import CampaignCreate, CampaignPublic


class CampaignStatus(enum.StrEnum):
    """Where a campaign stands."""

    ACTIVE = "active"
    PAUSED = "paused"
    CLOSED = "closed"


def create_campaign(*, session: Session, payload: CampaignCreate) -> LoyaltyCampaign:
    """Add an active campaign; the worker sets its budget on chain before it issues."""
    now = utcnow()
    if payload.ends_at is not None and payload.ends_at <= now:
        raise Conflict(
            f"ends_at {format_timestamp(payload.ends_at)} is in the past: the campaign's window "
            "would be over before it starts",
            errors=[{"location": "body", "field": "ends_at", "message": "is in the past"}],
        )
    expiry = payload.points_expire_after
    campaign = LoyaltyCampaign(
        id=new_id(),
        onchain_id=new_campaign_onchain_id(),
        name=payload.name,
        budget=payload.budget,
        starts_at=payload.starts_at or now,
        ends_at=payload.ends_at,
        rules=[rule.model_dump(mode="json") for rule in payload.rules],
        per_customer_cap=payload.per_customer_cap,
        expiry_seconds=int(expiry.total_seconds()) if expiry is not None else None,
        status=CampaignStatus.ACTIVE.value,
        planned_points=0,
        issued_points=0,
        created_at=now,
    )
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(*, session: Session, campaign_id: str) -> LoyaltyCampaign:
    """The campaign with public id `campaign_id`; raises `NotFound`."""
    campaign = None
    if is_public_id(campaign_id):
        campaign = session.scalars(
            select(LoyaltyCampaign).where(LoyaltyCampaign.id == campaign_id.lower())
        ).first()
    if campaign is None:
        shown = shorten(campaign_id)
        raise NotFound(f"no campaign with id {shown!r}", campaign_id=shown)
    return campaign


def lock_campaign(*, session: Session, campaign_id: str) -> LoyaltyCampaign:
    """`get_campaign`, locked FOR UPDATE: planners of one campaign take turns on its budget."""
    campaign = get_campaign(session=session, campaign_id=campaign_id)
    session.refresh(campaign, with_for_update=True)
    return campaign


def list_campaigns(*, session: Session, limit: int = 200) -> list[LoyaltyCampaign]:
    """The newest `limit` campaigns."""
    return list(
        session.scalars(select(LoyaltyCampaign).order_by(LoyaltyCampaign.pk.desc()).limit(limit))
    )


def set_status(*, session: Session, campaign_id: str, status: CampaignStatus) -> LoyaltyCampaign:
    """Pause, resume (active) or close; `Conflict` for a closed campaign or a no-op move."""
    campaign = lock_campaign(session=session, campaign_id=campaign_id)
    if campaign.status == CampaignStatus.CLOSED.value:
        raise Conflict(f"campaign {campaign.id} is closed; a closed campaign stays closed")
    if campaign.status == status.value:
        raise Conflict(f"campaign {campaign.id} is already {status.value}")
    campaign.status = status.value
    if status is CampaignStatus.CLOSED:
        campaign.closed_at = utcnow()
    session.flush()
    return campaign


def effective_status(campaign: LoyaltyCampaign, now: datetime) -> str:
    """The status, or "ended" for an active campaign whose window has passed."""
    if (
        campaign.status == CampaignStatus.ACTIVE.value
        and campaign.ends_at is not None
        and campaign.ends_at <= now
    ):
        return "ended"
    return campaign.status


def require_open(campaign: LoyaltyCampaign, now: datetime) -> None:
    """`Conflict` unless the campaign is active and `now` is inside its window."""
    if campaign.status != CampaignStatus.ACTIVE.value:
        hint = " (resume it first)" if campaign.status == CampaignStatus.PAUSED.value else ""
        raise Conflict(
            f"campaign {campaign.id} is {campaign.status}: it issues nothing{hint}",
            campaign_status=campaign.status,
        )
    if now < campaign.starts_at:
        raise Conflict(
            f"campaign {campaign.id} starts at {format_timestamp(campaign.starts_at)}; it "
            "issues nothing before",
            starts_at=format_timestamp(campaign.starts_at),
        )
    if campaign.ends_at is not None and now >= campaign.ends_at:
        raise Conflict(
            f"campaign {campaign.id} ended at {format_timestamp(campaign.ends_at)}; it issues "
            "nothing after",
            ends_at=format_timestamp(campaign.ends_at),
        )


def budget_target(campaign: LoyaltyCampaign) -> int:
    """The budget the chain should hold: the budget, or what was planned once closed."""
    if campaign.status == CampaignStatus.CLOSED.value:
        return campaign.planned_points
    return campaign.budget


def campaign_public(campaign: LoyaltyCampaign, now: datetime | None = None) -> CampaignPublic:
    """The public form of a campaign."""
    expiry = campaign.expiry_seconds
    return CampaignPublic(
        id=campaign.id,
        name=campaign.name,
        status=effective_status(campaign, now or utcnow()),
        onchain_id="0x" + campaign.onchain_id.hex(),
        budget=campaign.budget,
        planned_points=campaign.planned_points,
        issued_points=campaign.issued_points,
        remaining=campaign.budget - campaign.planned_points,
        chain_budget=campaign.chain_budget,
        starts_at=format_timestamp(campaign.starts_at),
        ends_at=format_timestamp(campaign.ends_at) if campaign.ends_at else None,
        rules=list(campaign.rules or []),
        per_customer_cap=campaign.per_customer_cap,
        points_expire_after=_iso_duration(expiry) if expiry is not None else None,
        created_at=format_timestamp(campaign.created_at),
        closed_at=format_timestamp(campaign.closed_at) if campaign.closed_at else None,
    )


def _iso_duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "") if seconds else "PT0S"


def expires_at(campaign: LoyaltyCampaign, earned_at: datetime) -> datetime | None:
    """When points the campaign issues at `earned_at` expire (None: never)."""
    if campaign.expiry_seconds is None:
        return None
    return earned_at + timedelta(seconds=campaign.expiry_seconds)
