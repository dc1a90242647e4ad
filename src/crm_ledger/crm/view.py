"""The customer 360 view and the CRM customer list, read from the journal, the loyalty tables
and what the indexer derived from the chain.

Exports: `customer_view`, `list_customers`, `SORT_KEYS`, `TIMELINE_KINDS`,
`DEFAULT_PAGE_SIZE`, `MAX_PAGE_SIZE`, `DEFAULT_TIMELINE_SIZE`, `MAX_TIMELINE_SIZE`.

Ledger states are computed when read, from three sources that each move on their own: the
journal batch (`batches.status`, set by the anchorer), the loyalty rows (set by the loyalty
worker) and the indexed events of the current epoch (set by the indexer, with its
confirmations). So a reorg that the indexer rolls back turns `confirmed` into `anchored` (or
`pending`, once the anchorer notices) on the next read, and nothing else needs updating.

Cursors are opaque (URL-safe base64 of a small JSON document) and tied to what they page:
a list cursor remembers its sort and a digest of its filters, and is refused with other ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from crm_ledger.crm.schemas import (
    CustomerProfile,
    CustomerSummaries,
    CustomerSummary,
    CustomerView,
    IntegrityStatus,
    LedgerCounts,
    LedgerState,
    LoyaltySummary,
    ShopCustomerId,
    Timeline,
    TimelineItem,
)
from crm_ledger.db.models import (
    AuditReport,
    Batch,
    BatchStatus,
    Customer,
    Deployment,
    IndexedBalance,
    IndexedBatch,
    IndexedTokenEvent,
    IndexerStream,
    IngestCustomerLink,
    IngestSource,
    LoyaltyCampaign,
    LoyaltyExpiration,
    LoyaltyIssuance,
    LoyaltyRedemption,
    LoyaltyWallet,
    Record,
    UTCDateTime,
)
from crm_ledger.errors import NotFound, Unprocessable
from crm_ledger.journal.schemas import format_timestamp, is_public_id, shorten
from crm_ledger.ledger.leaf import RecordKind

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMELINE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_TIMELINE_SIZE",
    "SORT_KEYS",
    "TIMELINE_KINDS",
    "customer_view",
    "list_customers",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
DEFAULT_TIMELINE_SIZE = 50
MAX_TIMELINE_SIZE = 200
LEDGER = "AuditLedger"
TOKEN = "LoyaltyToken"
#: Sort keys of the list; prefix "-" for descending.
SORT_KEYS = ("created_at", "name", "last_interaction_at", "balance")
#: Timeline kinds, in the order that breaks ties between items recorded at the same instant.
TIMELINE_KINDS = ("interaction", "order", "erasure", "reward", "redemption", "expiry")
_RECORD_KINDS = {"interaction": RecordKind.INTERACTION, "order": RecordKind.ORDER}
_RECORD_KINDS["erasure"] = RecordKind.ERASURE
_SOURCE_RANK = {"record": 0, "reward": 1, "redemption": 2, "expiry": 3}
#: Per burn timeline kind: its indexed event and final status (one word), and the detail its
#: rows add to points, status and burn id.
_BURN_KINDS = {"redemption": ("redeemed", "reward_ref"), "expiry": ("expired", "reason")}
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_CURSOR_LENGTH = 512
_MAX_FILTER_TEXT = 200


@dataclass(frozen=True, slots=True)
class _Epochs:
    ledger: int | None
    token: int | None
    token_indexed_through: int | None


def _epochs(session: Session) -> _Epochs:
    latest = dict(
        session.execute(
            select(Deployment.contract, func.max(Deployment.epoch))
            .where(Deployment.contract.in_([LEDGER, TOKEN]))
            .group_by(Deployment.contract)
        )
        .tuples()
        .all()
    )
    token = latest.get(TOKEN)
    through = None
    if token is not None:
        next_block = session.scalar(
            select(IndexerStream.next_block).where(
                IndexerStream.contract == TOKEN, IndexerStream.epoch == token
            )
        )
        through = int(next_block) - 1 if next_block is not None else None
    return _Epochs(ledger=latest.get(LEDGER), token=token, token_indexed_through=through)


# The 360 view -------------------------------------------------------------------------------


def customer_view(
    *,
    session: Session,
    customer_id: str,
    timeline_limit: int = DEFAULT_TIMELINE_SIZE,
    timeline_cursor: str | None = None,
    kinds: Sequence[str] | None = None,
) -> CustomerView:
    """The 360 view of one customer; raises `NotFound`, or `Unprocessable` for bad parameters."""
    if not 1 <= timeline_limit <= MAX_TIMELINE_SIZE:
        raise _bad("timeline_limit", f"must be from 1 to {MAX_TIMELINE_SIZE}")
    wanted = _check_kinds(kinds)
    after = _decode_timeline_cursor(timeline_cursor) if timeline_cursor is not None else None
    customer = None
    if is_public_id(customer_id):
        customer = session.scalars(
            select(Customer).where(Customer.id == customer_id.lower())
        ).first()
    if customer is None:
        shown = shorten(customer_id)
        raise NotFound(f"no customer with id {shown!r}", customer_id=shown)
    epochs = _epochs(session)
    items = _timeline(session, customer, epochs, wanted, after, timeline_limit + 1)
    page = items[:timeline_limit]
    next_cursor = None
    if len(items) > timeline_limit:
        last_key = page[-1][0]
        next_cursor = _encode({"t": last_key[0].isoformat(), "r": last_key[1], "k": last_key[2]})
    return CustomerView(
        customer=_profile(customer).model_copy(
            update={"external_ids": _shop_ids(session, customer.pk)}
        ),
        records=_record_counts(session, customer.pk, epochs),
        loyalty=_loyalty(session, customer.pk, epochs),
        integrity=_integrity(session, customer),
        timeline=Timeline(items=[item for _, item in page], next_cursor=next_cursor),
    )


def _profile(customer: Customer) -> CustomerProfile:
    return CustomerProfile(
        id=customer.id,
        name=customer.name,
        email=customer.email,
        phone=customer.phone,
        external_ref=customer.external_ref,
        tags=list(customer.tags or []),
        created_at=format_timestamp(customer.created_at),
        erased_at=format_timestamp(customer.erased_at) if customer.erased_at else None,
    )


def _shop_ids(session: Session, customer_pk: int) -> list[ShopCustomerId]:
    """Commerce ingest (issue 11): the customer's ids in the shops that send webhooks."""
    rows = session.execute(
        select(IngestSource.id, IngestSource.platform, IngestCustomerLink.external_id)
        .join(IngestSource, IngestSource.pk == IngestCustomerLink.source_pk)
        .where(IngestCustomerLink.customer_pk == customer_pk)
        .order_by(IngestCustomerLink.pk)
    ).tuples()
    return [
        ShopCustomerId(source_id=source_id, platform=platform, external_id=external_id)
        for source_id, platform, external_id in rows
    ]


def _confirmed_batch(epoch: int | None) -> ColumnElement[bool]:
    """The indexed event of the record's batch, in the current epoch, matching the journal."""
    if epoch is None:
        return false()
    return and_(
        IndexedBatch.epoch == epoch,
        IndexedBatch.batch_id == Batch.id,
        IndexedBatch.first_seq == Batch.first_seq,
        IndexedBatch.count == Batch.count,
        IndexedBatch.root == Batch.root,
    )


def _record_counts(session: Session, customer_pk: int, epochs: _Epochs) -> LedgerCounts:
    # Counted per batch first: the chain check then runs once per batch, not once per record.
    per_batch = (
        select(Record.batch_id, func.count().label("n"))
        .where(Record.customer_pk == customer_pk)
        .group_by(Record.batch_id)
        .subquery()
    )
    confirmed = select(IndexedBatch.pk).where(_confirmed_batch(epochs.ledger)).exists()
    total, confirmed_count, anchored_count = session.execute(
        select(
            func.sum(per_batch.c.n),
            func.sum(case((confirmed, per_batch.c.n), else_=0)),
            func.sum(
                case(
                    (and_(~confirmed, Batch.status == BatchStatus.ANCHORED.value), per_batch.c.n),
                    else_=0,
                )
            ),
        )
        .select_from(per_batch)
        .outerjoin(Batch, Batch.id == per_batch.c.batch_id)
    ).one()
    confirmed_n, anchored_n = int(confirmed_count or 0), int(anchored_count or 0)
    return LedgerCounts(
        pending=int(total or 0) - confirmed_n - anchored_n,
        anchored=anchored_n,
        confirmed=confirmed_n,
    )


def _loyalty(session: Session, customer_pk: int, epochs: _Epochs) -> LoyaltySummary | None:
    address = session.scalar(
        select(LoyaltyWallet.address).where(LoyaltyWallet.customer_pk == customer_pk)
    )
    if address is None:
        return None
    holder = str(address).lower()
    balance = None
    if epochs.token is not None:
        balance = session.scalar(
            select(IndexedBalance.balance).where(
                IndexedBalance.epoch == epochs.token, IndexedBalance.address == holder
            )
        )
    return LoyaltySummary(
        address=str(address),
        balance=int(balance or 0),
        as_of_block=epochs.token_indexed_through,
    )


# Timeline -----------------------------------------------------------------------------------

_Key = tuple[datetime, int, int]


def _timeline(
    session: Session,
    customer: Customer,
    epochs: _Epochs,
    wanted: set[str],
    after: _Key | None,
    limit: int,
) -> list[tuple[_Key, TimelineItem]]:
    merged: list[tuple[_Key, TimelineItem]] = []
    record_kinds = [int(_RECORD_KINDS[k]) for k in TIMELINE_KINDS[:3] if k in wanted]
    if record_kinds:
        merged += _record_items(session, customer.pk, epochs, record_kinds, after, limit)
    if "reward" in wanted:
        merged += _reward_items(session, customer.pk, epochs, after, limit)
    if "redemption" in wanted:
        merged += _burn_items(
            session, customer.pk, epochs, after, limit, model=LoyaltyRedemption, kind="redemption"
        )
    if "expiry" in wanted:
        merged += _burn_items(
            session, customer.pk, epochs, after, limit, model=LoyaltyExpiration, kind="expiry"
        )
    merged.sort(key=lambda pair: pair[0], reverse=True)
    return merged[:limit]


def _before(at: Any, pk: Any, source: str, after: _Key | None) -> ColumnElement[bool]:
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


def _hex(value: bytes | None) -> str | None:
    return "0x" + bytes(value).hex() if value is not None else None


def _record_items(
    session: Session,
    customer_pk: int,
    epochs: _Epochs,
    record_kinds: list[int],
    after: _Key | None,
    limit: int,
) -> list[tuple[_Key, TimelineItem]]:
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
    rows = session.execute(
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
    out: list[tuple[_Key, TimelineItem]] = []
    seen: set[int] = set()
    for row in rows:
        if row.pk in seen:
            continue
        seen.add(row.pk)
        ledger = _record_state(row, epochs)
        content = None
        if row.content is not None:
            document = json.loads(row.content)
            content = document.get("body") if isinstance(document, dict) else None
        out.append(
            (
                (row.created_at, _SOURCE_RANK["record"], row.pk),
                TimelineItem(
                    kind=cast(Any, RecordKind(row.kind).name.lower()),
                    id=row.id,
                    at=format_timestamp(row.created_at),
                    content=content,
                    ledger=ledger,
                ),
            )
        )
    return out


def _record_state(row: Any, epochs: _Epochs) -> LedgerState:
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
                tx_hash=_hex(row.indexed_tx_hash),
                block_number=row.indexed_block_number,
                block_hash=_hex(row.indexed_block_hash),
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
            tx_hash=_hex(row.tx_hash),
            block_number=row.block_number,
            block_hash=_hex(row.block_hash),
            drift=drift,
            **base,
        )
    return LedgerState(state="pending", tx_hash=_hex(row.tx_hash), drift=drift, **base)


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
            tx_hash=_hex(indexed.indexed_tx_hash),
            block_number=indexed.indexed_block_number,
            block_hash=_hex(indexed.indexed_block_hash),
        )
    if status == final:
        return LedgerState(state="anchored", tx_hash=_hex(tx_hash), block_number=block_number)
    if status == "failed":
        return LedgerState(state="failed")
    return LedgerState(state="pending")


def _indexed_token(event: str, epochs: _Epochs) -> Any:
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
    session: Session, customer_pk: int, epochs: _Epochs, after: _Key | None, limit: int
) -> list[tuple[_Key, TimelineItem]]:
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
            "issuance_id": _hex(lot.issuance_id),
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
        out.append(
            (
                (lot.earned_at, _SOURCE_RANK["reward"], lot.pk),
                TimelineItem(
                    kind="reward",
                    id=lot.id,
                    at=format_timestamp(lot.earned_at),
                    details=details,
                    ledger=ledger,
                ),
            )
        )
    return out


def _burn_items(
    session: Session,
    customer_pk: int,
    epochs: _Epochs,
    after: _Key | None,
    limit: int,
    *,
    model: type[LoyaltyRedemption] | type[LoyaltyExpiration],
    kind: str,
) -> list[tuple[_Key, TimelineItem]]:
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
        out.append(
            (
                (burn.created_at, _SOURCE_RANK[kind], burn.pk),
                TimelineItem(
                    kind=kind,
                    id=row.item_id,
                    at=format_timestamp(burn.created_at),
                    details={
                        "points": burn.points,
                        own_detail: getattr(burn, own_detail),
                        "status": burn.status,
                        "burn_id": _hex(burn.burn_id),
                    },
                    ledger=_token_state(
                        burn.status,
                        final=done,
                        tx_hash=burn.tx_hash,
                        block_number=burn.block_number,
                        indexed=row,
                        epoch=epochs.token,
                    ),
                ),
            )
        )
    return out


# Integrity ----------------------------------------------------------------------------------

_report_cache: dict[str, list[dict[str, Any]]] = {}
_report_cache_lock = threading.Lock()


def _findings(report_id: str, report: str | None) -> list[dict[str, Any]]:
    """The listed discrepancies of a finished report, parsed once per process."""
    with _report_cache_lock:
        cached = _report_cache.get(report_id)
    if cached is not None:
        return cached
    parsed = json.loads(report).get("discrepancies", []) if report else []
    with _report_cache_lock:
        _report_cache.clear()
        _report_cache[report_id] = parsed
    return parsed


def _integrity(session: Session, customer: Customer) -> IntegrityStatus:
    finished = session.scalars(
        select(AuditReport)
        .where(AuditReport.status.in_(["done", "failed"]))
        .order_by(AuditReport.pk.desc())
        .limit(1)
    ).first()
    running = (
        session.scalar(
            select(AuditReport.pk)
            .where(
                AuditReport.status == "running",
                AuditReport.pk > (finished.pk if finished is not None else 0),
            )
            .limit(1)
        )
        is not None
    )
    if finished is None:
        return IntegrityStatus(
            status="never_audited",
            audit_running=running,
            detail="no ledger audit has finished yet (POST /v1/audit/ledger runs one)",
        )
    common: dict[str, Any] = {
        "report_id": finished.id,
        "finished_at": format_timestamp(finished.finished_at) if finished.finished_at else None,
        "audit_running": running,
    }
    if finished.status == "failed":
        return IntegrityStatus(
            status="failed",
            detail=f"the latest ledger audit could not finish: {finished.error}",
            **common,
        )
    common |= {
        "ledger_clean": bool(finished.clean),
        "ledger_discrepancy_count": int(finished.discrepancy_count),
    }
    if finished.clean:
        return IntegrityStatus(
            status="clean", detail="the latest ledger audit found nothing", **common
        )
    findings = _findings(finished.id, finished.report)
    records = session.execute(
        select(Record.id, Record.seq, Record.batch_id).where(Record.customer_pk == customer.pk)
    ).all()
    record_ids = {row.id for row in records}
    seqs = {int(row.seq) for row in records if row.seq is not None}
    batch_ids = {int(row.batch_id) for row in records if row.batch_id is not None}
    touching = [f for f in findings if _touches(f, customer.id, record_ids, seqs, batch_ids)]
    if touching:
        return IntegrityStatus(
            status="discrepancies",
            discrepancies=touching[:100],
            detail=f"the latest ledger audit found {len(touching)} discrepancies touching this "
            "customer's records",
            **common,
        )
    if len(findings) < int(finished.discrepancy_count):
        return IntegrityStatus(
            status="unknown",
            detail="the latest ledger audit found more discrepancies than its report lists; "
            "none of those listed touch this customer",
            **common,
        )
    return IntegrityStatus(
        status="clean",
        detail="the latest ledger audit found discrepancies, none touching this customer",
        **common,
    )


def _touches(
    finding: dict[str, Any],
    customer_id: str,
    record_ids: set[str],
    seqs: set[int],
    batch_ids: set[int],
) -> bool:
    if finding.get("customer_id") == customer_id or finding.get("record_id") in record_ids:
        return True
    seq = finding.get("seq")
    if isinstance(seq, int) and seq in seqs:
        return True
    first, last = finding.get("first_seq"), finding.get("last_seq")
    if isinstance(first, int) and isinstance(last, int):
        if last - first < len(seqs):
            return any(s in seqs for s in range(first, last + 1))
        return any(first <= s <= last for s in seqs)
    batch_id = finding.get("batch_id")
    return isinstance(batch_id, int) and batch_id in batch_ids


# The customer list --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Filters:
    q: str | None
    tag: str | None
    balance_min: int | None
    balance_max: int | None
    last_interaction_after: datetime | None
    last_interaction_before: datetime | None

    def digest(self) -> str:
        text = json.dumps(
            [
                self.q,
                self.tag,
                self.balance_min,
                self.balance_max,
                self.last_interaction_after.isoformat() if self.last_interaction_after else None,
                self.last_interaction_before.isoformat() if self.last_interaction_before else None,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def list_customers(
    *,
    session: Session,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    sort: str = "-created_at",
    q: str | None = None,
    tag: str | None = None,
    balance_min: int | None = None,
    balance_max: int | None = None,
    last_interaction_after: datetime | None = None,
    last_interaction_before: datetime | None = None,
) -> CustomerSummaries:
    """A page of customers, searched, filtered and sorted; raises `Unprocessable` for bad input.

    `q` matches a substring of name, email or external ref (any case), or the exact id;
    `tag` one of the customer's tags; balances are the chain's (no address counts as 0);
    `last_interaction_*` bound the newest interaction (customers without one never match).
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise _bad("limit", f"must be from 1 to {MAX_PAGE_SIZE}")
    descending = sort.startswith("-")
    key = sort.removeprefix("-")
    if key not in SORT_KEYS:
        keys = ", ".join(SORT_KEYS)
        raise _bad("sort", f"must be one of {keys}, optionally prefixed with '-' for descending")
    filters = _check_filters(
        q, tag, balance_min, balance_max, last_interaction_after, last_interaction_before
    )
    epochs = _epochs(session)
    last_interaction = (
        select(func.max(Record.created_at))
        .where(
            Record.customer_pk == Customer.pk,
            Record.kind == int(RecordKind.INTERACTION),
        )
        .correlate(Customer)
        .scalar_subquery()
    )
    balance_column = IndexedBalance.balance
    query: Select[Any] = (
        select(Customer, last_interaction.label("last_interaction_at"), LoyaltyWallet.address)
        .add_columns(balance_column.label("balance"))
        .outerjoin(LoyaltyWallet, LoyaltyWallet.customer_pk == Customer.pk)
        .outerjoin(
            IndexedBalance,
            and_(
                IndexedBalance.epoch == (epochs.token if epochs.token is not None else -1),
                IndexedBalance.address == func.lower(LoyaltyWallet.address),
            ),
        )
    )
    balance = func.coalesce(balance_column, 0)
    sort_expression: Any = {
        "created_at": Customer.created_at,
        "name": func.coalesce(Customer.name, ""),
        "last_interaction_at": func.coalesce(last_interaction, literal(_NEVER, UTCDateTime())),
        "balance": balance,
    }[key]
    query = _apply_filters(session, query, filters, last_interaction, balance)
    if cursor is not None:
        value, pk = _decode_list_cursor(cursor, sort, filters)
        bound = literal(value, UTCDateTime()) if isinstance(value, datetime) else value
        if descending:
            query = query.where(
                or_(sort_expression < bound, and_(sort_expression == bound, Customer.pk < pk))
            )
        else:
            query = query.where(
                or_(sort_expression > bound, and_(sort_expression == bound, Customer.pk > pk))
            )
    order = (
        (sort_expression.desc(), Customer.pk.desc())
        if descending
        else (sort_expression.asc(), Customer.pk.asc())
    )
    rows = session.execute(query.order_by(*order).limit(limit + 1)).all()
    items = []
    for row in rows[:limit]:
        customer: Customer = row[0]
        items.append(
            CustomerSummary(
                id=customer.id,
                name=customer.name,
                email=customer.email,
                phone=customer.phone,
                external_ref=customer.external_ref,
                tags=list(customer.tags or []),
                created_at=format_timestamp(customer.created_at),
                erased_at=format_timestamp(customer.erased_at) if customer.erased_at else None,
                last_interaction_at=_timestamp(_aware(row.last_interaction_at)),
                loyalty_balance=int(row.balance or 0) if row.address is not None else None,
            )
        )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        last_customer: Customer = last[0]
        value_out: Any = {
            "created_at": last_customer.created_at.isoformat(),
            "name": last_customer.name or "",
            "last_interaction_at": (_aware(last.last_interaction_at) or _NEVER).isoformat(),
            "balance": int(last.balance or 0),
        }[key]
        next_cursor = _encode(
            {"s": sort, "f": filters.digest(), "v": value_out, "k": last_customer.pk}
        )
    return CustomerSummaries(items=items, next_cursor=next_cursor)


def _timestamp(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def _aware(value: Any) -> datetime | None:
    """A datetime from a scalar subquery (SQLite answers a string, naive, in UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_filters(
    q: str | None,
    tag: str | None,
    balance_min: int | None,
    balance_max: int | None,
    after: datetime | None,
    before: datetime | None,
) -> _Filters:
    for name, text in (("q", q), ("tag", tag)):
        if text is not None and not 1 <= len(text) <= _MAX_FILTER_TEXT:
            raise _bad(name, f"must be 1 to {_MAX_FILTER_TEXT} characters")
        # No stored value holds one, and SQLite ends a pattern at a NUL: "\0..." matched all.
        if text is not None and any(unicodedata.category(char) == "Cc" for char in text):
            raise _bad(name, "must not contain control characters (NUL, tab, newline, ...)")
    for name, number in (("balance_min", balance_min), ("balance_max", balance_max)):
        if number is not None and not 0 <= number <= 2**63 - 1:
            raise _bad(name, "must be a whole number of points from 0 to 2**63 - 1")
    if balance_min is not None and balance_max is not None and balance_min > balance_max:
        raise _bad("balance_min", "must not be above balance_max")
    for name, moment in (("last_interaction_after", after), ("last_interaction_before", before)):
        if moment is not None and moment.tzinfo is None:
            raise _bad(name, "must be an RFC 3339 timestamp with a time zone, e.g. ...Z")
    if after is not None and before is not None and after >= before:
        raise _bad("last_interaction_after", "must be before last_interaction_before")
    return _Filters(
        q=q,
        tag=tag,
        balance_min=balance_min,
        balance_max=balance_max,
        last_interaction_after=after.astimezone(UTC) if after else None,
        last_interaction_before=before.astimezone(UTC) if before else None,
    )


def _apply_filters(
    session: Session, query: Select[Any], filters: _Filters, last_interaction: Any, balance: Any
) -> Select[Any]:
    if filters.q is not None:
        needle = filters.q.lower()
        matches = [
            func.lower(Customer.name).contains(needle, autoescape=True),
            func.lower(Customer.email).contains(needle, autoescape=True),
            func.lower(Customer.external_ref).contains(needle, autoescape=True),
        ]
        if is_public_id(filters.q):
            matches.append(Customer.id == needle)
        query = query.where(or_(*matches))
    if filters.tag is not None:
        if session.get_bind().dialect.name == "postgresql":
            query = query.where(Customer.tags.cast(JSONB).contains([filters.tag]))
        else:
            each = func.json_each(Customer.tags).table_valued("value")
            query = query.where(
                select(1).select_from(each).where(each.c.value == filters.tag).exists()
            )
    if filters.balance_min is not None:
        query = query.where(balance >= filters.balance_min)
    if filters.balance_max is not None:
        query = query.where(balance <= filters.balance_max)
    if filters.last_interaction_after is not None:
        query = query.where(
            last_interaction > literal(filters.last_interaction_after, UTCDateTime())
        )
    if filters.last_interaction_before is not None:
        query = query.where(
            last_interaction < literal(filters.last_interaction_before, UTCDateTime())
        )
    return query


# Cursors and input checks -------------------------------------------------------------------


def _encode(document: dict[str, Any]) -> str:
    raw = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(cursor: str, field: str) -> dict[str, Any]:
    document: Any = None
    if 0 < len(cursor) <= _MAX_CURSOR_LENGTH and cursor.isascii():
        padded = cursor + "=" * (-len(cursor) % 4)
        try:
            document = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
        except (binascii.Error, ValueError):
            document = None
    if not isinstance(document, dict) or _encode(document) != cursor:
        raise _bad(
            field,
            "is not a cursor this API issued: pass the next_cursor of the previous page "
            "unchanged, or leave it out to start from the first page",
        )
    return document


def _decode_timeline_cursor(cursor: str) -> _Key:
    document = _decode(cursor, "timeline_cursor")
    try:
        at = datetime.fromisoformat(document["t"])
        rank, pk = document["r"], document["k"]
        if at.tzinfo is None or not isinstance(rank, int) or not isinstance(pk, int):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise _bad("timeline_cursor", "is not a timeline cursor this API issued") from None
    return at, rank, pk


def _decode_list_cursor(cursor: str, sort: str, filters: _Filters) -> tuple[Any, int]:
    document = _decode(cursor, "cursor")
    if set(document) != {"s", "f", "v", "k"} or not isinstance(document["k"], int):
        raise _bad("cursor", "is not a customer-list cursor this API issued")
    if document["s"] != sort or document["f"] != filters.digest():
        raise _bad(
            "cursor",
            "was issued for another sort or other filters: pass the same sort and filters as "
            "the request that returned it, or leave the cursor out to start again",
        )
    value = document["v"]
    key = sort.removeprefix("-")
    try:
        if key in ("created_at", "last_interaction_at"):
            value = datetime.fromisoformat(value)
        elif not isinstance(value, int if key == "balance" else str):
            raise ValueError
    except (TypeError, ValueError):
        raise _bad("cursor", "is not a customer-list cursor this API issued") from None
    return value, int(document["k"])


def _check_kinds(kinds: Sequence[str] | None) -> set[str]:
    if kinds is None:
        return set(TIMELINE_KINDS)
    unknown = [kind for kind in kinds if kind not in TIMELINE_KINDS]
    if unknown or not kinds:
        raise _bad("kinds", f"each kind must be one of {', '.join(TIMELINE_KINDS)}")
    return set(kinds)


def _bad(field: str, message: str) -> Unprocessable:
    return Unprocessable(
        f"{field} {message}",
        errors=[{"location": "query", "field": field, "message": message}],
    )
