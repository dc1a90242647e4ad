"""A customer's timeline: journal records, rewards, redemptions and expiries merged newest first,
each with its ledger state, paged by a cursor.

Exports: `timeline_page`, `check_kinds`, `decode_timeline_cursor`, `TIMELINE_KINDS`,
`TimelineKey`.

Ledger states are computed when read, from three sources that each move on their own: the
journal batch (`batches.status`, set by the anchorer), the loyalty rows (set by the loyalty
worker) and the indexed events of the current epoch (set by the indexer, with its
confirmations). So a reorg that the indexer rolls back turns `confirmed` into `anchored` (or
`pending`, once the anchorer notices) on the next read, and nothing else needs updating.

Each source is read newest first through an index (`ix_records_customer_created` for records),
at most one page plus one of each, and the pages are merged: a page never sorts a history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, and_, or_, select
from sqlalchemy.orm import Session

from crm_ledger.crm.schemas import LedgerState, TimelineItem
from crm_ledger.crm.view.common import Epochs, bad_parameter, decode_cursor
from crm_ledger.db.models import (
    Batch,
    BatchStatus,
    IndexedBatch,
    IndexedTokenEvent,
    LoyaltyCampaign,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyRedemption,
    Record,
)
from crm_ledger.journal.schemas import format_timestamp
from crm_ledger.ledger.hexcodec import hex0x_or_none
from crm_ledger.ledger.leaf import RecordKind

__all__ = [
    "TIMELINE_KINDS",
    "TimelineKey",
    "check_kinds",
    "decode_timeline_cursor",
    "timeline_page",
]

#: Timeline kinds, in the order that breaks ties between items recorded at the same instant.
TIMELINE_KINDS = ("interaction", "order", "erasure", "reward", "redemption", "expiry")
_RECORD_KINDS = {"interaction": RecordKind.INTERACTION, "order": RecordKind.ORDER}
_RECORD_KINDS["erasure"] = RecordKind.ERASURE
_SOURCE_RANK = {"record": 0, "reward": 1, "redemption": 2, "expiry": 3}
#: Per burn timeline kind: its indexed event and final status (one word), and the detail its
#: rows add to points, status and burn id.
_BURN_KINDS = {"redemption": ("redeemed", "reward_ref"), "expiry": ("expired", "reason")}

#: Where an item sorts: its time, its source's rank, its row's pk (newest first).
TimelineKey = tuple[datetime, int, int]
_Item = tuple[TimelineKey, TimelineItem]


def timeline_page(
    session: Session,
    customer_pk: int,
    epochs: Epochs,
    wanted: set[str],
    after: TimelineKey | None,
    limit: int,
) -> list[_Item]:
    """Up to `limit` items of the `wanted` kinds after the cursor key `after`, newest first."""
    merged: list[_Item] = []
    record_kinds = [int(_RECORD_KINDS[k]) for k in TIMELINE_KINDS[:3] if k in wanted]
    if record_kinds:
        merged += _record_items(session, customer_pk, epochs, record_kinds, after, limit)
    if "reward" in wanted:
        merged += _reward_items(session, customer_pk, epochs, after, limit)
    if "redemption" in wanted:
        merged += _burn_items(
            session, customer_pk, epochs, after, limit, model=LoyaltyRedemption, kind="redemption"
        )
    if "expiry" in wanted:
        merged += _burn_items(
            session, customer_pk, epochs, after, limit, model=LoyaltyExpiration, kind="expiry"
        )
    merged.sort(key=lambda pair: pair[0], reverse=True)
    return merged[:limit]


def check_kinds(kinds: Sequence[str] | None) -> set[str]:
    """The kinds asked for (all when None); raises `Unprocessable` for an unknown one."""
    if kinds is None:
        return set(TIMELINE_KINDS)
    unknown = [kind for kind in kinds if kind not in TIMELINE_KINDS]
    if unknown or not kinds:
        raise bad_parameter("kinds", f"each kind must be one of {', '.join(TIMELINE_KINDS)}")
    return set(kinds)


def decode_timeline_cursor(cursor: str) -> TimelineKey:
    """The key a timeline cursor carries; raises `Unprocessable`."""
    document = decode_cursor(cursor, "timeline_cursor")
    try:
        at = datetime.fromisoformat(document["t"])
        rank, pk = document["r"], document["k"]
        if at.tzinfo is None or not isinstance(rank, int) or not isinstance(pk, int):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise bad_parameter("timeline_cursor", "is not a timeline cursor this API issued") from None
    return at, rank, pk


def _before(at: Any, pk: Any, source: str, after: TimelineKey | None) -> ColumnElement[bool]:
    """Items of `source` that sort after the cursor (newest first: at, source rank, pk)."""
    if after is None:
        return and_(True)
    at_cursor, rank_cursor, pk_cursor = after
    rank = _SOURCE_RANK[source]
    if rank < rank_cursor:
        return cast(ColumnElement[bool], at <= at_cursor)
    if rank > rank_cursor:
        return cast(ColumnElement[bool], at < at_cursor)
    return or_(at < at_cursor, and_(at == at_cursor, pk < pk_cursor))


# Journal records ----------------------------------------------------------------------------


def _record_rows(
    session: Session,
    customer_pk: int,
    epochs: Epochs,
    record_kinds: list[int],
    after: TimelineKey | None,
    limit: int,
) -> Sequence[Row[Any]]:
    indexed = (
        select(
            IndexedBatch.batch_id,
            IndexedBatch.first_seq,
            IndexedBatch.count.label("indexed_count"),
            IndexedBatch.root,
            IndexedBatch.tx_hash,
            IndexedBatch.block_number,
            IndexedBatch.block_hash,
        )
        .where(IndexedBatch.epoch == (epochs.ledger if epochs.ledger is not None else -1))
        .subquery()
    )
    return session.execute(
        select(
            Record.pk,
            Record.id,
            Record.kind,
            Record.content,
            Record.created_at,
            Record.seq,
            Record.batch_id,
            Batch.status,
            Batch.epoch,
            Batch.first_seq,
            Batch.count.label("batch_count"),
            Batch.root,
            Batch.tx_hash,
            Batch.block_number,
            Batch.block_hash,
            indexed.c.first_seq.label("indexed_first_seq"),
            indexed.c.indexed_count,
            indexed.c.root.label("indexed_root"),
            indexed.c.tx_hash.label("indexed_tx_hash"),
            indexed.c.block_number.label("indexed_block_number"),
            indexed.c.block_hash.label("indexed_block_hash"),
        )
        .outerjoin(Batch, Batch.id == Record.batch_id)
        .outerjoin(indexed, indexed.c.batch_id == Record.batch_id)
        .where(
            Record.customer_pk == customer_pk,
            Record.kind.in_(record_kinds),
            _before(Record.created_at, Record.pk, "record", after),
        )
        .order_by(Record.created_at.desc(), Record.pk.desc())
        .limit(limit)
    ).all()


def _record_items(
    session: Session,
    customer_pk: int,
    epochs: Epochs,
    record_kinds: list[int],
    after: TimelineKey | None,
    limit: int,
) -> list[_Item]:
    out: list[_Item] = []
    seen: set[int] = set()
    for row in _record_rows(session, customer_pk, epochs, record_kinds, after, limit):
        if row.pk in seen:
            continue
        seen.add(row.pk)
        content = None
        if row.content is not None:
            document = json.loads(row.content)
            content = document.get("body") if isinstance(document, dict) else None
        item = TimelineItem(
            kind=cast(Any, RecordKind(row.kind).name.lower()),
            id=row.id,
            at=format_timestamp(row.created_at),
            content=content,
            ledger=_record_state(row, epochs),
        )
        out.append(((row.created_at, _SOURCE_RANK["record"], row.pk), item))
    return out


def _record_state(row: Any, epochs: Epochs) -> LedgerState:
    base: dict[str, Any] = {"batch_id": row.batch_id, "seq": row.seq}
    drift = None
    if row.indexed_root is not None:
        if (row.indexed_first_seq, row.indexed_count, bytes(row.indexed_root)) == (
            row.first_seq,
            row.batch_count,
            bytes(row.root),
        ):
            return LedgerState(
                state="confirmed",
                epoch=epochs.ledger,
                tx_hash=hex0x_or_none(row.indexed_tx_hash),
                block_number=row.indexed_block_number,
                block_hash=hex0x_or_none(row.indexed_block_hash),
                **base,
            )
        drift = (
            f"the chain holds batch {row.batch_id} with another range or root "
            f"(0x{bytes(row.indexed_root).hex()}) than the journal: see GET /v1/crm/reconciliation"
        )
    if row.status == BatchStatus.ANCHORED.value:
        return LedgerState(
            state="anchored",
            epoch=row.epoch,
            tx_hash=hex0x_or_none(row.tx_hash),
            block_number=row.block_number,
            block_hash=hex0x_or_none(row.block_hash),
            drift=drift,
            **base,
        )
    return LedgerState(state="pending", tx_hash=hex0x_or_none(row.tx_hash), drift=drift, **base)


# Loyalty: rewards, redemptions, expiries ----------------------------------------------------


def _token_state(
    status: str,
    *,
    final: str,
    tx_hash: bytes | None,
    block_number: int | None,
    indexed: Any,
    epoch: int | None,
) -> LedgerState:
    if indexed.indexed_tx_hash is not None:
        return LedgerState(
            state="confirmed",
            epoch=epoch,
            tx_hash=hex0x_or_none(indexed.indexed_tx_hash),
            block_number=indexed.indexed_block_number,
            block_hash=hex0x_or_none(indexed.indexed_block_hash),
        )
    if status == final:
        return LedgerState(
            state="anchored", tx_hash=hex0x_or_none(tx_hash), block_number=block_number
        )
    if status == "failed":
        return LedgerState(state="failed")
    return LedgerState(state="pending")


def _indexed_token(event: str, epochs: Epochs) -> Any:
    return (
        select(
            IndexedTokenEvent.token_id,
            IndexedTokenEvent.tx_hash.label("indexed_tx_hash"),
            IndexedTokenEvent.block_number.label("indexed_block_number"),
            IndexedTokenEvent.block_hash.label("indexed_block_hash"),
        )
        .where(
            IndexedTokenEvent.epoch == (epochs.token if epochs.token is not None else -1),
            IndexedTokenEvent.event == event,
        )
        .subquery()
    )


def _reward_items(
    session: Session, customer_pk: int, epochs: Epochs, after: TimelineKey | None, limit: int
) -> list[_Item]:
    indexed = _indexed_token("issued", epochs)
    rows = session.execute(
        select(
            LoyaltyIssuance,
            LoyaltyCampaign.id.label("campaign_id"),
            LoyaltyCampaign.name.label("campaign_name"),
            indexed.c.indexed_tx_hash,
            indexed.c.indexed_block_number,
            indexed.c.indexed_block_hash,
        )
        .join(LoyaltyCampaign, LoyaltyCampaign.pk == LoyaltyIssuance.campaign_pk)
        .outerjoin(indexed, indexed.c.token_id == LoyaltyIssuance.issuance_id)
        .where(
            LoyaltyIssuance.customer_pk == customer_pk,
            _before(LoyaltyIssuance.earned_at, LoyaltyIssuance.pk, "reward", after),
        )
        .order_by(LoyaltyIssuance.earned_at.desc(), LoyaltyIssuance.pk.desc())
        .limit(limit)
    ).all()
    out = []
    for row in rows:
        lot: LoyaltyIssuance = row[0]
        details = {
            "points": lot.points,
            "remaining": lot.remaining,
            "status": lot.status,
            "campaign_id": row.campaign_id,
            "campaign_name": row.campaign_name,
            "source": lot.source,
            "issuance_id": hex0x_or_none(lot.issuance_id),
            "expires_at": format_timestamp(lot.expires_at) if lot.expires_at else None,
        }
        ledger = _token_state(
            lot.status,
            final="issued",
            tx_hash=lot.tx_hash,
            block_number=lot.block_number,
            indexed=row,
            epoch=epochs.token,
        )
        item = TimelineItem(
            kind="reward",
            id=lot.id,
            at=format_timestamp(lot.earned_at),
            details=details,
            ledger=ledger,
        )
        out.append(((lot.earned_at, _SOURCE_RANK["reward"], lot.pk), item))
    return out


def _burn_items(
    session: Session,
    customer_pk: int,
    epochs: Epochs,
    after: TimelineKey | None,
    limit: int,
    *,
    model: type[LoyaltyRedemption] | type[LoyaltyExpiration],
    kind: str,
) -> list[_Item]:
    """Timeline items of `kind` ("redemption" or "expiry"): `model` rows, points burned on chain."""
    done, own_detail = _BURN_KINDS[kind]
    indexed = _indexed_token(done, epochs)
    query = select(
        model,
        indexed.c.indexed_tx_hash,
        indexed.c.indexed_block_number,
        indexed.c.indexed_block_hash,
    )
    if issubclass(model, LoyaltyExpiration):
        # An expiration has no public id of its own: its item is named by the lot it expires.
        query = query.add_columns(LoyaltyIssuance.id.label("item_id")).join(
            LoyaltyIssuance, LoyaltyIssuance.pk == LoyaltyExpiration.issuance_pk
        )
    else:
        query = query.add_columns(model.id.label("item_id"))
    rows = session.execute(
        query.outerjoin(indexed, indexed.c.token_id == model.burn_id)
        .where(
            model.customer_pk == customer_pk,
            _before(model.created_at, model.pk, kind, after),
        )
        .order_by(model.created_at.desc(), model.pk.desc())
        .limit(limit)
    ).all()
    out = []
    for row in rows:
        burn: LoyaltyRedemption | LoyaltyExpiration = row[0]
        item = TimelineItem(
            kind=kind,
            id=row.item_id,
            at=format_timestamp(burn.created_at),
            details={
                "points": burn.points,
                own_detail: getattr(burn, own_detail),
                "status": burn.status,
                "burn_id": hex0x_or_none(burn.burn_id),
            },
            ledger=_token_state(
                burn.status,
                final=done,
                tx_hash=burn.tx_hash,
                block_number=burn.block_number,
                indexed=row,
                epoch=epochs.token,
            ),
        )
        out.append(((burn.created_at, _SOURCE_RANK[kind], burn.pk), item))
    return out
