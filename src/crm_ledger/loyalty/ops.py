"""Journal side of the loyalty worker: chain operations and what they carry.

Exports: `OpKind`, `OpStatus`, `OpEntry`, `OpPlan`, `Located`, `cut_issue_ops`,
`cut_redeem_ops`, `unfinished_ops`, `mark_sent`, `mark_confirmed`, `mark_failed`, `reset_op`,
`relocate`, `confirmed_ops_newest_first`, `budgets_to_sync`, `record_chain_budget`,
`forget_chain_budgets`, `customers_with_unissued_lots`.

Every function is one short transaction; the worker calls them from a thread. An op moves
planned → sent (tx hash recorded before waiting for it) → confirmed (block recorded), or to
failed when the contract refused it. A chain rollback puts a confirmed op back to planned.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from crm_ledger.db import outbox
from crm_ledger.db.models import (
    LoyaltyCampaign,
    LoyaltyChainOp,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyLotUse,
    LoyaltyRedemption,
    utcnow,
)
from crm_ledger.db.session import reading
from crm_ledger.loyalty.awards import refresh_jobs
from crm_ledger.loyalty.campaigns import budget_target
from crm_ledger.loyalty.expiry import ExpirationStatus
from crm_ledger.loyalty.lots import LotStatus
from crm_ledger.loyalty.redemptions import RedemptionStatus
from crm_ledger.loyalty.wallets import WalletKeyring, ensure_wallets


class OpKind(enum.StrEnum):
    """Which LoyaltyToken function an op calls."""

    ISSUE = "issue"
    REDEEM = "redeem"
    EXPIRE = "expire"


class OpStatus(enum.StrEnum):
    """Where an op stands."""

    PLANNED = "planned"
    SENT = outbox.SENT
    CONFIRMED = "confirmed"
    FAILED = "failed"


_KIND_ORDER = {OpKind.ISSUE.value: 0, OpKind.REDEEM.value: 1, OpKind.EXPIRE.value: 2}


@dataclass(frozen=True, slots=True)
class OpEntry:
    """One id of an op: the lot, redemption or expiration row it stands for."""

    pk: int
    id: bytes
    holder: str
    amount: int
    customer_pk: int
    ref: bytes | None


@dataclass(frozen=True, slots=True)
class OpPlan:
    """What the chain needs to send one op (a detached copy)."""

    pk: int
    kind: str
    status: str
    tx_hash: bytes | None
    campaign_pk: int | None
    campaign: bytes | None
    entries: tuple[OpEntry, ...]

    @property
    def total(self) -> int:
        """Points the op moves."""
        return sum(entry.amount for entry in self.entries)


@dataclass(frozen=True, slots=True)
class Located:
    """Where an id was minted or burnt: its transaction and block (None: unknown)."""

    tx_hash: bytes | None
    block_number: int | None


def cut_issue_ops(
    session_factory: sessionmaker[Session],
    keyring: WalletKeyring,
    *,
    max_entries: int,
    limit: int = 20_000,
) -> int:
    """Put up to `limit` planned lots into issue ops of at most `max_entries`; returns how many.

    Lots are grouped by campaign and sorted by issuance id, so ids sharing a storage word of the
    contract's used-id flags go out together. Each lot gets its customer's address now.
    """
    if not _any(session_factory, _UNCUT_LOTS):
        return 0
    with session_factory() as session, session.begin():
        rows = session.execute(
            select(LoyaltyIssuance.pk, LoyaltyIssuance.campaign_pk, LoyaltyIssuance.customer_pk)
            .where(
                LoyaltyIssuance.status == LotStatus.PLANNED.value,
                LoyaltyIssuance.op_pk.is_(None),
            )
            .order_by(LoyaltyIssuance.campaign_pk, LoyaltyIssuance.issuance_id)
            .limit(limit)
        ).all()
        if not rows:
            return 0
        addresses = ensure_wallets(session, keyring, {row.customer_pk for row in rows})
        updates: list[dict[str, Any]] = []
        for campaign_pk, grouped in groupby(rows, key=lambda row: row.campaign_pk):
            members = list(grouped)
            for start in range(0, len(members), max_entries):
                chunk = members[start : start + max_entries]
                op = LoyaltyChainOp(
                    kind=OpKind.ISSUE.value,
                    campaign_pk=campaign_pk,
                    status=OpStatus.PLANNED.value,
                    entries=len(chunk),
                    created_at=utcnow(),
                )
                session.add(op)
                session.flush()
                updates += [
                    {"pk": row.pk, "op_pk": op.pk, "address": addresses[row.customer_pk]}
                    for row in chunk
                ]
        session.execute(update(LoyaltyIssuance), updates)
        return len(rows)


def cut_redeem_ops(session_factory: sessionmaker[Session]) -> int:
    """One op per pending redemption that has none; returns how many."""
    if not _any(session_factory, _UNCUT_REDEMPTIONS):
        return 0
    with session_factory() as session, session.begin():
        pending = list(
            session.scalars(
                select(LoyaltyRedemption)
                .where(
                    LoyaltyRedemption.status == RedemptionStatus.PENDING.value,
                    LoyaltyRedemption.op_pk.is_(None),
                )
                .order_by(LoyaltyRedemption.pk)
            )
        )
        for redemption in pending:
            op = LoyaltyChainOp(kind=OpKind.REDEEM.value, status=OpStatus.PLANNED.value, entries=1)
            session.add(op)
            session.flush()
            redemption.op_pk = op.pk
        return len(pending)


# What the cuts look for, asked first in a read-only transaction: the worker cuts every step,
# and on SQLite a write transaction queues for the one write lock the API's writes need.
_UNCUT_LOTS = select(LoyaltyIssuance.pk).where(
    LoyaltyIssuance.status == LotStatus.PLANNED.value, LoyaltyIssuance.op_pk.is_(None)
)
_UNCUT_REDEMPTIONS = select(LoyaltyRedemption.pk).where(
    LoyaltyRedemption.status == RedemptionStatus.PENDING.value,
    LoyaltyRedemption.op_pk.is_(None),
)


def _any(session_factory: sessionmaker[Session], query: Select[Any]) -> bool:
    """Whether `query` finds a row, read without taking the write lock."""
    with reading(session_factory) as session:
        return session.execute(query.limit(1)).first() is not None


def unfinished_ops(session_factory: sessionmaker[Session]) -> list[OpPlan]:
    """Planned and sent ops: issues first (burns may need their points), then redeems, expiries."""
    with reading(session_factory) as session:
        ops = list(
            session.scalars(
                select(LoyaltyChainOp).where(
                    LoyaltyChainOp.status.in_([OpStatus.PLANNED.value, OpStatus.SENT.value])
                )
            )
        )
        ops.sort(key=lambda op: (_KIND_ORDER[op.kind], op.pk))
        return [_plan(session, op) for op in ops]


def _plan(session: Session, op: LoyaltyChainOp) -> OpPlan:
    campaign = session.get(LoyaltyCampaign, op.campaign_pk) if op.campaign_pk else None
    entries: list[OpEntry]
    if op.kind == OpKind.ISSUE.value:
        entries = [
            OpEntry(pk, issuance_id, str(address), points, customer_pk, None)
            for pk, issuance_id, address, points, customer_pk in session.execute(
                select(
                    LoyaltyIssuance.pk,
                    LoyaltyIssuance.issuance_id,
                    LoyaltyIssuance.address,
                    LoyaltyIssuance.points,
                    LoyaltyIssuance.customer_pk,
                )
                .where(
                    LoyaltyIssuance.op_pk == op.pk,
                    LoyaltyIssuance.status != LotStatus.FAILED.value,
                )
                .order_by(LoyaltyIssuance.issuance_id)
            )
            .tuples()
            .all()
        ]
    elif op.kind == OpKind.REDEEM.value:
        entries = [
            OpEntry(r.pk, r.burn_id, r.address, r.points, r.customer_pk, r.chain_ref)
            for r in session.scalars(
                select(LoyaltyRedemption).where(LoyaltyRedemption.op_pk == op.pk)
            )
        ]
    else:
        entries = [
            OpEntry(e.pk, e.burn_id, e.address, e.points, e.customer_pk, e.reason_code)
            for e in session.scalars(
                select(LoyaltyExpiration)
                .where(LoyaltyExpiration.op_pk == op.pk)
                .order_by(LoyaltyExpiration.burn_id)
            )
        ]
    return OpPlan(
        pk=op.pk,
        kind=op.kind,
        status=op.status,
        tx_hash=op.tx_hash,
        campaign_pk=op.campaign_pk,
        campaign=campaign.onchain_id if campaign is not None else None,
        entries=tuple(entries),
    )


def mark_sent(session_factory: sessionmaker[Session], *, op_pk: int, tx_hash: bytes) -> None:
    """Remember the transaction that carries the op, before waiting for it to be mined."""
    outbox.mark_sent(session_factory, LoyaltyChainOp, LoyaltyChainOp.pk == op_pk, tx_hash=tx_hash)


def mark_confirmed(
    session_factory: sessionmaker[Session],
    *,
    plan: OpPlan,
    tx_hash: bytes,
    block_number: int,
    block_hash: bytes,
    gas_used: int,
    located: dict[bytes, Located],
) -> None:
    """Record the mined op and where each of its entries landed (its own tx, or an earlier one)."""
    now = utcnow()
    with session_factory() as session, session.begin():
        session.execute(
            update(LoyaltyChainOp)
            .where(LoyaltyChainOp.pk == plan.pk)
            .values(
                status=OpStatus.CONFIRMED.value,
                tx_hash=tx_hash,
                block_number=block_number,
                block_hash=block_hash,
                gas_used=gas_used,
                error=None,
                confirmed_at=now,
            )
        )
        where = {entry.pk: located.get(entry.id, Located(None, None)) for entry in plan.entries}
        if plan.kind == OpKind.ISSUE.value:
            _confirm_lots(session, plan, where, now)
        elif plan.kind == OpKind.REDEEM.value:
            session.execute(
                update(LoyaltyRedemption),
                [
                    {
                        "pk": pk,
                        "status": RedemptionStatus.REDEEMED.value,
                        "tx_hash": at.tx_hash,
                        "block_number": at.block_number,
                        "error": None,
                        "redeemed_at": now,
                    }
                    for pk, at in where.items()
                ],
            )
        else:
            session.execute(
                update(LoyaltyExpiration),
                [
                    {
                        "pk": pk,
                        "status": ExpirationStatus.EXPIRED.value,
                        "tx_hash": at.tx_hash,
                        "block_number": at.block_number,
                        "expired_at": now,
                    }
                    for pk, at in where.items()
                ],
            )


def _confirm_lots(session: Session, plan: OpPlan, where: dict[int, Located], now: Any) -> None:
    newly = {
        pk
        for (pk,) in session.execute(
            select(LoyaltyIssuance.pk).where(
                LoyaltyIssuance.op_pk == plan.pk,
                LoyaltyIssuance.status == LotStatus.PLANNED.value,
            )
        )
    }
    confirmed = [
        {
            "pk": pk,
            "status": LotStatus.ISSUED.value,
            "tx_hash": at.tx_hash,
            "block_number": at.block_number,
            "error": None,
            "issued_at": now,
        }
        for pk, at in where.items()
        if pk in newly
    ]
    if confirmed:
        session.execute(update(LoyaltyIssuance), confirmed)
    points = sum(e.amount for e in plan.entries if e.pk in newly)
    if plan.campaign_pk is not None and points:
        session.execute(
            update(LoyaltyCampaign)
            .where(LoyaltyCampaign.pk == plan.campaign_pk)
            .values(issued_points=LoyaltyCampaign.issued_points + points)
        )
    refresh_jobs(session, _jobs_of(session, plan.pk))


def _jobs_of(session: Session, op_pk: int) -> set[int]:
    return {
        pk
        for (pk,) in session.execute(
            select(LoyaltyIssuance.job_pk)
            .where(LoyaltyIssuance.op_pk == op_pk, LoyaltyIssuance.job_pk.is_not(None))
            .distinct()
        )
    }


def mark_failed(
    session_factory: sessionmaker[Session],
    *,
    plan: OpPlan,
    error: str,
    entry_pks: Iterable[int] | None = None,
) -> None:
    """The chain refused the op: its entries fail (all, or `entry_pks`), with `error`.

    Failed lots give their points back to the campaign's budget; a failed redemption gives its
    points back to the lots it drew from. A failed expiry leaves its lot at 0 and says why: the
    chain and the journal disagree about that holder, which a person must look at.
    """
    with session_factory() as session, session.begin():
        failing = set(entry_pks) if entry_pks is not None else {e.pk for e in plan.entries}
        everything = failing == {e.pk for e in plan.entries}
        if everything:
            session.execute(
                update(LoyaltyChainOp)
                .where(LoyaltyChainOp.pk == plan.pk)
                .values(status=OpStatus.FAILED.value, error=error, confirmed_at=utcnow())
            )
        if plan.kind == OpKind.ISSUE.value:
            jobs = _jobs_of(session, plan.pk)
            points = sum(e.amount for e in plan.entries if e.pk in failing)
            if failing:
                session.execute(
                    update(LoyaltyIssuance),
                    [
                        {"pk": pk, "status": LotStatus.FAILED.value, "remaining": 0, "error": error}
                        for pk in failing
                    ],
                )
            if plan.campaign_pk is not None:
                session.execute(
                    update(LoyaltyCampaign)
                    .where(LoyaltyCampaign.pk == plan.campaign_pk)
                    .values(planned_points=LoyaltyCampaign.planned_points - points)
                )
            refresh_jobs(session, jobs)
        elif plan.kind == OpKind.REDEEM.value:
            for pk in failing:
                for use in session.scalars(
                    select(LoyaltyLotUse).where(LoyaltyLotUse.redemption_pk == pk)
                ):
                    session.execute(
                        update(LoyaltyIssuance)
                        .where(LoyaltyIssuance.pk == use.issuance_pk)
                        .values(remaining=LoyaltyIssuance.remaining + use.points)
                    )
                session.execute(
                    update(LoyaltyRedemption)
                    .where(LoyaltyRedemption.pk == pk)
                    .values(status=RedemptionStatus.FAILED.value, error=error)
                )
        else:
            session.execute(
                update(LoyaltyExpiration)
                .where(LoyaltyExpiration.pk.in_(failing))
                .values(status=ExpirationStatus.FAILED.value)
            )


def confirmed_ops_newest_first(
    session_factory: sessionmaker[Session], *, limit: int, before: tuple[int, int] | None = None
) -> list[tuple[int, int, bytes, bytes]]:
    """(pk, block number, block hash, tx hash) of confirmed ops, newest block first."""
    with reading(session_factory) as session:
        query = (
            select(
                LoyaltyChainOp.pk,
                LoyaltyChainOp.block_number,
                LoyaltyChainOp.block_hash,
                LoyaltyChainOp.tx_hash,
            )
            .where(
                LoyaltyChainOp.status == OpStatus.CONFIRMED.value,
                LoyaltyChainOp.block_number.is_not(None),
            )
            .order_by(LoyaltyChainOp.block_number.desc(), LoyaltyChainOp.pk.desc())
            .limit(limit)
        )
        if before is not None:
            block, pk = before
            query = query.where(
                (LoyaltyChainOp.block_number < block)
                | ((LoyaltyChainOp.block_number == block) & (LoyaltyChainOp.pk < pk))
            )
        return [
            (pk, number, block_hash, tx)
            for pk, number, block_hash, tx in session.execute(query).tuples().all()
            if number is not None and block_hash is not None and tx is not None
        ]


def relocate(
    session_factory: sessionmaker[Session],
    *,
    op_pk: int,
    tx_hash: bytes,
    block_number: int,
    block_hash: bytes,
) -> None:
    """A reorg moved the op's transaction to another block: record its new place."""
    with session_factory() as session, session.begin():
        session.execute(
            update(LoyaltyChainOp)
            .where(LoyaltyChainOp.pk == op_pk)
            .values(block_number=block_number, block_hash=block_hash)
        )
        for model in (LoyaltyIssuance, LoyaltyRedemption, LoyaltyExpiration):
            session.execute(
                update(model)
                .where(model.op_pk == op_pk, model.tx_hash == tx_hash)
                .values(block_number=block_number)
            )


def reset_op(session_factory: sessionmaker[Session], *, op_pk: int) -> None:
    """A rollback took the op's transaction off the chain: plan it again, entries unconfirmed."""
    with session_factory() as session, session.begin():
        op = session.get(LoyaltyChainOp, op_pk, with_for_update=True)
        if op is None or op.status != OpStatus.CONFIRMED.value:
            return
        op.status = OpStatus.PLANNED.value
        op.tx_hash = op.block_hash = op.block_number = op.gas_used = None
        op.confirmed_at = op.sent_at = None
        unset = {"tx_hash": None, "block_number": None}
        if op.kind == OpKind.ISSUE.value:
            lots = list(
                session.scalars(
                    select(LoyaltyIssuance).where(
                        LoyaltyIssuance.op_pk == op_pk,
                        LoyaltyIssuance.status == LotStatus.ISSUED.value,
                    )
                )
            )
            for lot in lots:
                lot.status = LotStatus.PLANNED.value
                lot.tx_hash = lot.block_number = lot.issued_at = None
            if op.campaign_pk is not None:
                campaign = session.get(LoyaltyCampaign, op.campaign_pk)
                assert campaign is not None
                campaign.issued_points -= sum(lot.points for lot in lots)
            session.flush()
            refresh_jobs(session, _jobs_of(session, op_pk))
        elif op.kind == OpKind.REDEEM.value:
            session.execute(
                update(LoyaltyRedemption)
                .where(LoyaltyRedemption.op_pk == op_pk)
                .values(status=RedemptionStatus.PENDING.value, redeemed_at=None, **unset)
            )
        else:
            session.execute(
                update(LoyaltyExpiration)
                .where(
                    LoyaltyExpiration.op_pk == op_pk,
                    LoyaltyExpiration.status == ExpirationStatus.EXPIRED.value,
                )
                .values(status=ExpirationStatus.PENDING.value, expired_at=None, **unset)
            )


def budgets_to_sync(session_factory: sessionmaker[Session]) -> list[tuple[int, bytes, int]]:
    """(pk, on-chain id, target budget) of campaigns whose chain budget is not the target."""
    with reading(session_factory) as session:
        campaigns = session.scalars(select(LoyaltyCampaign).order_by(LoyaltyCampaign.pk))
        return [
            (c.pk, c.onchain_id, budget_target(c))
            for c in campaigns
            if c.chain_budget != budget_target(c)
        ]


def record_chain_budget(session_factory: sessionmaker[Session], *, pk: int, budget: int) -> None:
    """The chain now holds `budget` for the campaign."""
    with session_factory() as session, session.begin():
        session.execute(
            update(LoyaltyCampaign).where(LoyaltyCampaign.pk == pk).values(chain_budget=budget)
        )


def forget_chain_budgets(session_factory: sessionmaker[Session]) -> None:
    """After a rollback nothing is known about budgets on chain: read them all again."""
    with session_factory() as session, session.begin():
        session.execute(update(LoyaltyCampaign).values(chain_budget=None))


def customers_with_unissued_lots(
    session_factory: sessionmaker[Session], customer_pks: Sequence[int]
) -> set[int]:
    """Which of `customer_pks` still have lots waiting to be issued."""
    with reading(session_factory) as session:
        return set(
            session.scalars(
                select(LoyaltyIssuance.customer_pk)
                .where(
                    LoyaltyIssuance.customer_pk.in_(list(customer_pks)),
                    LoyaltyIssuance.status == LotStatus.PLANNED.value,
                )
                .distinct()
            )
        )
