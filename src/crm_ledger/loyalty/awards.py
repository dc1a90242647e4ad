"""Bulk awards: validate the whole request, then plan one lot per recipient in one commit.

Exports: `JobStatus`, `plan_award`, `resolve_segment`, `job_progress`, `refresh_jobs`,
`get_job`.

Nothing is planned unless everything holds: the campaign is open, every customer is known and
not erased, nobody would pass the per-customer cap, and the total fits both the budget left in
the journal (budget - planned) and, when the chain can be asked, what the chain has left once
the lots already queued are issued (`campaignRemaining` - queued). Then the job and its lots
commit together and the answer is 202: the issuance worker sends them in as few transactions as
the gas cap allows.
"""

from __future__ import annotations

import enum
import json
from collections import Counter, defaultdict
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_ledger.db.models import (
    Customer,
    LoyaltyAwardJob,
    LoyaltyCampaign,
    LoyaltyIssuance,
    Record,
    new_id,
    utcnow,
)
from crm_ledger.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from crm_ledger.journal.schemas import format_timestamp, is_public_id, shorten
from crm_ledger.ledger.leaf import RecordKind
from crm_ledger.loyalty.campaigns import lock_campaign, require_open
from crm_ledger.loyalty.ids import award_issuance_id
from crm_ledger.loyalty.lots import LotStatus, plan_lots, points_by_customer
from crm_ledger.loyalty.schemas import AwardCreate, AwardJobPublic, Segment

#: How many offending customer ids a problem lists (the count is always complete).
LISTED_IDS = 100


class JobStatus(enum.StrEnum):
    """queued until every lot is issued (done) or some failed (failed)."""

    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"


def plan_award(
    *,
    session: Session,
    campaign_id: str,
    payload: AwardCreate,
    max_recipients: int,
    chain_remaining: int | None,
) -> LoyaltyAwardJob:
    """Validate and plan an award job; raises a `RequestError` naming the problem."""
    now = utcnow()
    campaign = lock_campaign(session=session, campaign_id=campaign_id)
    require_open(campaign, now)
    if payload.customer_ids is not None:
        recipients = _listed_customers(session, payload.customer_ids, max_recipients)
        selection: dict[str, object] = {"customer_ids": len(recipients)}
    else:
        assert payload.segment is not None
        recipients = resolve_segment(session, payload.segment)
        if not recipients:
            raise Unprocessable(
                "the segment matches no customer: nothing to award",
                errors=[{"location": "body", "field": "segment", "message": "matches nobody"}],
            )
        if len(recipients) > max_recipients:
            raise PayloadTooLarge(
                f"the segment matches {len(recipients)} customers, more than the "
                f"{max_recipients} one award may reach; narrow the segment",
                max_recipients=max_recipients,
                recipients=len(recipients),
            )
        selection = {"segment": payload.segment.model_dump(mode="json", exclude_none=True)}
    total = payload.points * len(recipients)
    _check_budget(campaign, total, chain_remaining)
    _check_caps(session, campaign, recipients, payload.points)
    job = LoyaltyAwardJob(
        id=new_id(),
        campaign_pk=campaign.pk,
        points=payload.points,
        recipients=len(recipients),
        selection=selection,
        status=JobStatus.QUEUED.value,
        created_at=now,
    )
    session.add(job)
    session.flush()
    plan_lots(
        session,
        campaign,
        [
            {
                "issuance_id": award_issuance_id(job.id, index),
                "customer_pk": pk,
                "source": "award",
                "award_key": f"job:{job.id}:{index}",
                "job_pk": job.pk,
                "points": payload.points,
            }
            for index, (pk, _customer_id) in enumerate(recipients)
        ],
        earned_at=now,
    )
    return job


def _listed_customers(
    session: Session, customer_ids: list[str], max_recipients: int
) -> list[tuple[int, str]]:
    if len(customer_ids) > max_recipients:
        raise PayloadTooLarge(
            f"an award reaches at most {max_recipients} customers, this one lists "
            f"{len(customer_ids)}; split it into several awards",
            max_recipients=max_recipients,
            recipients=len(customer_ids),
        )
    counts = Counter(customer_ids)
    duplicates = sorted(cid for cid, times in counts.items() if times > 1)
    if duplicates:
        raise Unprocessable(
            f"customer_ids lists {len(duplicates)} customers more than once; list each once",
            duplicate_customer_ids=duplicates[:LISTED_IDS],
            errors=[{"location": "body", "field": "customer_ids", "message": "duplicates"}],
        )
    found: dict[str, tuple[int, bool]] = {}
    for start in range(0, len(customer_ids), 1000):
        chunk = customer_ids[start : start + 1000]
        for pk, cid, erased_at in session.execute(
            select(Customer.pk, Customer.id, Customer.erased_at).where(Customer.id.in_(chunk))
        ).tuples():
            found[cid] = (pk, erased_at is not None)
    unknown = [cid for cid in customer_ids if cid not in found]
    if unknown:
        raise Unprocessable(
            f"{len(unknown)} of the {len(customer_ids)} customers are unknown; nothing was "
            "awarded: correct or remove them",
            unknown_customer_ids=unknown[:LISTED_IDS],
            unknown_count=len(unknown),
            errors=[{"location": "body", "field": "customer_ids", "message": "unknown ids"}],
        )
    erased = [cid for cid in customer_ids if found[cid][1]]
    if erased:
        raise Unprocessable(
            f"{len(erased)} of the customers had their personal data erased and earn nothing "
            "more; nothing was awarded: remove them",
            erased_customer_ids=erased[:LISTED_IDS],
            erased_count=len(erased),
            errors=[{"location": "body", "field": "customer_ids", "message": "erased customers"}],
        )
    return [(found[cid][0], cid) for cid in customer_ids]


def resolve_segment(session: Session, segment: Segment) -> list[tuple[int, str]]:
    """(pk, id) of the customers, not erased, matching every criterion of `segment`, by pk."""
    candidates = [
        (pk, cid, tags)
        for pk, cid, tags in session.execute(
            select(Customer.pk, Customer.id, Customer.tags)
            .where(Customer.erased_at.is_(None))
            .order_by(Customer.pk)
        )
        .tuples()
        .all()
    ]
    if segment.tag is not None:
        candidates = [c for c in candidates if segment.tag in (c[2] or [])]
    if segment.min_orders is not None:
        orders = _distinct_orders(session)
        candidates = [c for c in candidates if orders.get(c[0], 0) >= segment.min_orders]
    if segment.last_interaction_after is not None or segment.last_interaction_before is not None:
        last = dict(
            session.execute(
                select(Record.customer_pk, func.max(Record.created_at))
                .where(Record.kind == int(RecordKind.INTERACTION))
                .group_by(Record.customer_pk)
            )
            .tuples()
            .all()
        )
        after, before = segment.last_interaction_after, segment.last_interaction_before
        candidates = [
            c
            for c in candidates
            if (moment := _aware(last.get(c[0]))) is not None
            and (after is None or moment >= after)
            and (before is None or moment < before)
        ]
    return [(pk, cid) for pk, cid, _tags in candidates]


def _aware(value: datetime | None) -> datetime | None:
    # func.max() bypasses the column type on SQLite, which then returns naive UTC or text.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


def _distinct_orders(session: Session) -> dict[int, int]:
    numbers: defaultdict[int, set[str]] = defaultdict(set)
    for customer_pk, content in session.execute(
        select(Record.customer_pk, Record.content).where(
            Record.kind == int(RecordKind.ORDER), Record.content.is_not(None)
        )
    ).tuples():
        body = json.loads(content or b"{}").get("body", {})
        numbers[customer_pk].add(str(body.get("order_number")))
    return {pk: len(found) for pk, found in numbers.items()}


def _check_budget(campaign: LoyaltyCampaign, total: int, chain_remaining: int | None) -> None:
    left = campaign.budget - campaign.planned_points
    if total > left:
        raise Conflict(
            f"the award needs {total} points but campaign {campaign.id} has {left} left of its "
            f"budget of {campaign.budget} ({campaign.planned_points} planned); nothing was awarded",
            requested_points=total,
            remaining_points=left,
        )
    if chain_remaining is not None:
        queued = campaign.planned_points - campaign.issued_points
        chain_left = chain_remaining - queued
        if total > chain_left:
            raise Conflict(
                f"the award needs {total} points but the chain lets campaign {campaign.id} issue "
                f"only {chain_remaining} more, of which {queued} are queued already; nothing "
                "was awarded",
                requested_points=total,
                remaining_points=max(chain_left, 0),
                chain_remaining_points=chain_remaining,
                queued_points=queued,
            )


def _check_caps(
    session: Session,
    campaign: LoyaltyCampaign,
    recipients: list[tuple[int, str]],
    points: int,
) -> None:
    cap = campaign.per_customer_cap
    if cap is None:
        return
    if points > cap:
        raise Conflict(
            f"{points} points is over the campaign's per-customer cap of {cap}",
            per_customer_cap=cap,
        )
    used = points_by_customer(session, campaign.pk, [pk for pk, _ in recipients])
    over = [cid for pk, cid in recipients if used.get(pk, 0) + points > cap]
    if over:
        raise Conflict(
            f"{len(over)} customers would pass the campaign's per-customer cap of {cap} "
            "points; nothing was awarded",
            per_customer_cap=cap,
            over_cap_customer_ids=over[:LISTED_IDS],
            over_cap_count=len(over),
        )


def get_job(*, session: Session, campaign: LoyaltyCampaign, job_id: str) -> LoyaltyAwardJob:
    """The award job `job_id` of `campaign`; raises `NotFound`."""
    job = None
    if is_public_id(job_id):
        job = session.scalars(
            select(LoyaltyAwardJob).where(
                LoyaltyAwardJob.id == job_id.lower(), LoyaltyAwardJob.campaign_pk == campaign.pk
            )
        ).first()
    if job is None:
        shown = shorten(job_id)
        raise NotFound(f"campaign {campaign.id} has no award job {shown!r}", job_id=shown)
    return job


def job_progress(
    session: Session, campaign: LoyaltyCampaign, job: LoyaltyAwardJob
) -> AwardJobPublic:
    """How far the job's lots are, and the transactions that carry them."""
    counts = _lot_counts(session, job.pk)
    transactions = session.scalars(
        select(LoyaltyIssuance.tx_hash)
        .where(LoyaltyIssuance.job_pk == job.pk, LoyaltyIssuance.tx_hash.is_not(None))
        .distinct()
    ).all()
    errors = session.scalars(
        select(LoyaltyIssuance.error)
        .where(LoyaltyIssuance.job_pk == job.pk, LoyaltyIssuance.error.is_not(None))
        .distinct()
        .limit(10)
    ).all()
    return AwardJobPublic(
        id=job.id,
        campaign_id=campaign.id,
        status=job.status,
        points=job.points,
        recipients=job.recipients,
        total_points=job.points * job.recipients,
        issued=int(counts.get(LotStatus.ISSUED.value, 0)),
        pending=int(counts.get(LotStatus.PLANNED.value, 0)),
        failed=int(counts.get(LotStatus.FAILED.value, 0)),
        transactions=sorted("0x" + tx.hex() for tx in transactions if tx is not None),
        errors=[str(e) for e in errors],
        created_at=format_timestamp(job.created_at),
        finished_at=format_timestamp(job.finished_at) if job.finished_at else None,
        progress_url=f"/v1/campaigns/{campaign.id}/awards/{job.id}",
    )


def _lot_counts(session: Session, job_pk: int) -> dict[str, int]:
    """How many of the job's lots have each status."""
    rows = session.execute(
        select(LoyaltyIssuance.status, func.count())
        .where(LoyaltyIssuance.job_pk == job_pk)
        .group_by(LoyaltyIssuance.status)
    )
    return dict(rows.tuples().all())


def refresh_jobs(session: Session, job_pks: set[int]) -> None:
    """Mark jobs done (or failed) once none of their lots is still planned; reopen on rollback."""
    for job in session.scalars(select(LoyaltyAwardJob).where(LoyaltyAwardJob.pk.in_(job_pks))):
        counts = _lot_counts(session, job.pk)
        if counts.get(LotStatus.PLANNED.value):
            job.status, job.finished_at = JobStatus.QUEUED.value, None
        elif job.status == JobStatus.QUEUED.value:
            failed = counts.get(LotStatus.FAILED.value)
            job.status = JobStatus.FAILED.value if failed else JobStatus.DONE.value
            job.finished_at = utcnow()
