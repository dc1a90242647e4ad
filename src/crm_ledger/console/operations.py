"""What the console's operations page charts: anchoring throughput, gas, batch sizes, lag.

Exports: `BatchPoint`, `MinutePoint`, `OperationsOverview`, `ChainEndpoint`, `CampaignSpend`,
`ExpiringPoints`, `operations_overview`, `browser_rpc_url`, `campaign_spend`, `expiring_points`,
`BUCKETS`, `MAX_BUCKETS`, `MAX_MINUTES`, `MAX_BATCHES`.

Read-only queries over the batches table (records are counted through their batches, so the
figures cost one indexed scan of recent batches, not of the journal), plus the anchoring backlog.
The marketing page's figures are sums over loyalty lots: a campaign's issued points over
time and the points expiring by day. Nothing here is personal: ids, counts, gas, points and
timestamps.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import Batch, BatchStatus, LoyaltyCampaign, LoyaltyIssuance, utcnow
from crm_ledger.errors import NotFound
from crm_ledger.journal.records import anchoring_backlog

#: At most this many minutes of history per request.
MAX_MINUTES = 24 * 60
#: At most this many recent batches are listed.
MAX_BATCHES = 500


class BatchPoint(BaseModel):
    """One anchored batch."""

    id: int
    count: int
    gas_used: int | None
    gas_per_record: float | None = Field(description="gas_used / count")
    created_at: str
    anchored_at: str | None
    anchoring_seconds: float | None = Field(description="from cut to mined")


class MinutePoint(BaseModel):
    """Records anchored and batches mined in one UTC minute."""

    minute: str
    records: int
    batches: int
    gas_used: int


class AnchoringState(BaseModel):
    """The backlog: records not on chain yet and how long the oldest has waited."""

    pending_records: int
    lag_seconds: float


class OperationsOverview(BaseModel):
    """The operations page: backlog, per-minute series, recent batches, chain and indexer."""

    generated_at: str
    minutes: int
    anchoring: AnchoringState
    per_minute: list[MinutePoint] = Field(description="oldest first, one point per minute")
    batches: list[BatchPoint] = Field(description="the most recent anchored batches, oldest first")
    chain: dict[str, object] = Field(description="the anchorer's chain status, as /readyz shows")
    indexer: dict[str, object] = Field(description="the indexer's state, lag included")


class ChainEndpoint(BaseModel):
    """Where a browser reads the ledger's chain from, for the console's verifier."""

    chain_id: int | None
    contract: str | None
    epoch: int | None
    rpc_url: str | None = Field(
        description="JSON-RPC URL for browsers; null when the service's URL carries "
        "credentials and no CRM_LEDGER_CONSOLE_RPC_URL is set"
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def operations_overview(
    *,
    session: Session,
    minutes: int,
    batch_limit: int,
    chain_status: dict[str, object],
) -> OperationsOverview:
    """The figures of the last `minutes` minutes and the last `batch_limit` anchored batches."""
    now = utcnow()
    since = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    backlog = anchoring_backlog(session=session)
    oldest = backlog.oldest_created_at
    lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0

    buckets = {
        since + timedelta(minutes=i): MinutePoint(
            minute=_iso(since + timedelta(minutes=i)) or "", records=0, batches=0, gas_used=0
        )
        for i in range(minutes)
    }
    recent = session.execute(
        select(Batch.anchored_at, Batch.count, Batch.gas_used).where(
            Batch.status == BatchStatus.ANCHORED.value, Batch.anchored_at >= since
        )
    )
    for anchored_at, count, gas_used in recent:
        point = buckets.get(anchored_at.replace(second=0, microsecond=0))
        if point is not None:
            point.records += count
            point.batches += 1
            point.gas_used += gas_used or 0

    latest = session.scalars(
        select(Batch)
        .where(Batch.status == BatchStatus.ANCHORED.value)
        .order_by(Batch.id.desc())
        .limit(batch_limit)
    ).all()
    batches = [
        BatchPoint(
            id=batch.id,
            count=batch.count,
            gas_used=batch.gas_used,
            gas_per_record=(
                round(batch.gas_used / batch.count, 1) if batch.gas_used is not None else None
            ),
            created_at=_iso(batch.created_at) or "",
            anchored_at=_iso(batch.anchored_at),
            anchoring_seconds=(
                round((batch.anchored_at - batch.created_at).total_seconds(), 3)
                if batch.anchored_at is not None
                else None
            ),
        )
        for batch in reversed(latest)
    ]
    chain = {key: value for key, value in chain_status.items() if key not in ("indexer", "loyalty")}
    indexer = chain_status.get("indexer")
    return OperationsOverview(
        generated_at=_iso(now) or "",
        minutes=minutes,
        anchoring=AnchoringState(pending_records=backlog.pending, lag_seconds=round(lag, 3)),
        per_minute=list(buckets.values()),
        batches=batches,
        chain=chain,
        indexer=dict(indexer) if isinstance(indexer, dict) else {"state": "stopped"},
    )


def browser_rpc_url(*, configured: str | None, service_url: str | None) -> str | None:
    """The RPC URL to offer browsers: the configured one, else the service's own when it
    carries nothing secret (no user, password, query or path beyond '/')."""
    if configured:
        return configured
    if not service_url:
        return None
    parts = urlsplit(service_url)
    if parts.username or parts.password or parts.query or parts.path not in ("", "/"):
        return None
    if parts.scheme not in ("http", "https"):
        return None
    return service_url


# Loyalty figures for the marketing page ----------------------------------------------------

#: Bucket widths of the campaign spend chart.
BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 500


class SpendPoint(BaseModel):
    """Points a campaign issued on chain in one bucket, and its running total."""

    at: str
    issued_points: int
    cumulative_points: int


class CampaignSpend(BaseModel):
    """A campaign's issued points over time (from the issuances confirmed on chain)."""

    campaign_id: str
    budget: int
    bucket: str
    points: list[SpendPoint] = Field(description="oldest first; the last bucket is the current")


class ExpiringDay(BaseModel):
    """Points of issued, unspent lots that expire on one UTC day."""

    day: str
    points: int
    lots: int


class ExpiringPoints(BaseModel):
    """Points expiring in the next `days` days, by day."""

    days: int
    total_points: int
    by_day: list[ExpiringDay]


def _floor(moment: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return epoch + ((moment - epoch) // width) * width


def campaign_spend(
    *, session: Session, campaign_id: str, bucket: str, buckets: int
) -> CampaignSpend:
    """Issued points per bucket over the last `buckets` buckets; raises `NotFound`."""
    width = BUCKETS[bucket]
    campaign = session.scalars(
        select(LoyaltyCampaign).where(LoyaltyCampaign.id == campaign_id[:64])
    ).one_or_none()
    if campaign is None:
        raise NotFound(f"no campaign with id {campaign_id[:64]!r}")
    start = _floor(utcnow(), width) - width * (buckets - 1)
    before = session.scalar(
        select(func.coalesce(func.sum(LoyaltyIssuance.points), 0)).where(
            LoyaltyIssuance.campaign_pk == campaign.pk,
            LoyaltyIssuance.status == "issued",
            LoyaltyIssuance.issued_at < start,
        )
    )
    per_bucket = [0] * buckets
    rows = session.execute(
        select(LoyaltyIssuance.issued_at, LoyaltyIssuance.points).where(
            LoyaltyIssuance.campaign_pk == campaign.pk,
            LoyaltyIssuance.status == "issued",
            LoyaltyIssuance.issued_at >= start,
        )
    )
    for issued_at, points in rows:
        index = min(buckets - 1, int((issued_at - start) // width))
        per_bucket[index] += points
    total = int(before or 0)
    out = []
    for i, points in enumerate(per_bucket):
        total += points
        out.append(
            SpendPoint(
                at=_iso(start + width * i) or "", issued_points=points, cumulative_points=total
            )
        )
    return CampaignSpend(campaign_id=campaign.id, budget=campaign.budget, bucket=bucket, points=out)


def expiring_points(*, session: Session, days: int) -> ExpiringPoints:
    """Unspent points of issued lots that expire between now and `days` days from now."""
    now = utcnow()
    rows = session.execute(
        select(LoyaltyIssuance.expires_at, LoyaltyIssuance.remaining).where(
            LoyaltyIssuance.status == "issued",
            LoyaltyIssuance.remaining > 0,
            LoyaltyIssuance.expires_at >= now,
            LoyaltyIssuance.expires_at < now + timedelta(days=days),
        )
    )
    by_day: dict[str, ExpiringDay] = {}
    for expires_at, remaining in rows:
        day = expires_at.date().isoformat()
        entry = by_day.setdefault(day, ExpiringDay(day=day, points=0, lots=0))
        entry.points += remaining
        entry.lots += 1
    ordered = [by_day[day] for day in sorted(by_day)]
    return ExpiringPoints(days=days, total_points=sum(d.points for d in ordered), by_day=ordered)
